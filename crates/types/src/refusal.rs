//! A protocol-neutral refusal: what any surface (or the front door on its behalf) answers when
//! it will not or cannot serve a request, before a protocol family renders it (Kubernetes
//! `Status`, KFP error JSON, KFAM JSON, OAuth2 error JSON, an HTML page).
//!
//! Invariants: the HTTP status code is derived from the [`RefusalKind`], never chosen apart from
//! it; `message` is client-facing text only. A failure of kfsec itself (storage, a broken
//! invariant) is built with [`Refusal::failure`]: a generic message plus an [`Incident`] id, the
//! one mechanism by which a client can quote a failure and an operator find its cause in the log
//! (the caller logs the cause under the same id); internal error text never goes in a refusal.

use std::fmt;

use crate::clock::{Rng, random_array};

/// Why a request is refused; decides the HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalKind {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: no (valid) credentials.
    Unauthenticated,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: nothing here.
    NotFound,
    /// 413: the request is too large.
    TooLarge,
    /// 429: too many requests; retry later.
    TooManyRequests,
    /// 500: kfsec failed.
    Internal,
    /// 502: the upstream could not be reached.
    BadGateway,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 503: kfsec (or its storage) is unavailable; retry later.
    Unavailable,
}

impl RefusalKind {
    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::BadGateway => 502,
            Self::GatewayTimeout => 504,
            Self::Unavailable => 503,
        }
    }

    /// The HTTP reason phrase (an HTML page's title).
    pub fn phrase(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::Unauthenticated => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::TooLarge => "Payload Too Large",
            Self::TooManyRequests => "Too Many Requests",
            Self::Internal => "Internal Server Error",
            Self::BadGateway => "Bad Gateway",
            Self::GatewayTimeout => "Gateway Timeout",
            Self::Unavailable => "Service Unavailable",
        }
    }
}

/// The id of one failure, shown to the client and logged with the cause.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Incident(String);

impl Incident {
    /// A fresh id (8 hex digits from `rng`).
    pub fn new(rng: &dyn Rng) -> Self {
        Self(crate::hex::encode(&random_array::<4>(rng)))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id a refusal's text ends with (`… (incident <id>)`, see [`Refusal::text`]), if it
    /// is well-formed.
    pub fn quoted_in(text: &str) -> Option<&str> {
        let (_, id) = text.strip_suffix(')')?.rsplit_once("(incident ")?;
        (id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which failure of kfsec itself a [`Refusal::failure`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Storage failed or is unreachable (503, retry later).
    Storage,
    /// Anything else (500).
    Internal,
}

/// A refusal, before a protocol family renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why; decides the status code.
    pub kind: RefusalKind,
    /// Client-facing text.
    pub message: String,
    /// Set for failures of kfsec itself (5xx).
    pub incident: Option<Incident>,
}

impl Refusal {
    /// A refusal of `kind` with a client-facing `message`.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            incident: None,
        }
    }

    /// A failure of kfsec: a generic message and a fresh incident id; the caller logs the cause
    /// with [`Refusal::incident`].
    pub fn failure(failure: Failure, rng: &dyn Rng) -> Self {
        let (kind, message) = match failure {
            Failure::Storage => (
                RefusalKind::Unavailable,
                "the request could not be completed: storage is unavailable; retry later",
            ),
            Failure::Internal => (
                RefusalKind::Internal,
                "the request could not be completed because of an internal error",
            ),
        };
        Self {
            kind,
            message: message.into(),
            incident: Some(Incident::new(rng)),
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        self.kind.code()
    }

    /// The incident id, `""` if there is none (for log lines).
    pub fn incident_id(&self) -> &str {
        self.incident.as_ref().map_or("", Incident::as_str)
    }

    /// The message with the incident id, if any: `<message> (incident <id>)`.
    pub fn text(&self) -> String {
        match &self.incident {
            Some(id) => format!("{} (incident {id})", self.message),
            None => self.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Rng for Fixed {
        fn fill(&self, buf: &mut [u8]) {
            buf.fill(0xab);
        }
    }

    #[test]
    fn failures_are_generic_and_carry_an_id() {
        let r = Refusal::failure(Failure::Storage, &Fixed);
        assert_eq!(r.code(), 503);
        assert_eq!(
            r.text(),
            "the request could not be completed: storage is unavailable; retry later (incident abababab)"
        );
        assert_eq!(Incident::quoted_in(&r.text()), Some("abababab"));
        assert_eq!(Incident::quoted_in("no (incident abc)"), None);
        assert_eq!(Refusal::failure(Failure::Internal, &Fixed).code(), 500);
        assert_eq!(Refusal::new(RefusalKind::Forbidden, "no").text(), "no");
    }
}
