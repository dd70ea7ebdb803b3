//! `error`: the one place S3 errors are rendered — the [`S3Error`] enum (S3's error code, HTTP
//! status and message) and its XML body `<Error><Code/><Message/><Resource/><RequestId/></Error>`.
//! Invariants: a rendered message never carries internal text (a cause kept in
//! `InternalError`/`ServiceUnavailable` is for the log only), never a secret, a canonical request
//! or a string-to-sign; every client-influenced value is XML-escaped; HEAD answers have no body.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use kfsec_types::UnixTime;

/// A boxed cause kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest clock skew S3 accepts between a request's `X-Amz-Date` and the server time.
pub const MAX_SKEW_MILLIS: u64 = 900_000;

/// An S3 error as S3 answers it: [`S3Error::code`], [`S3Error::status`], [`S3Error::message`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3Error {
    /// 403: the signature did not verify (header, presigned, chunk or trailer signature).
    #[error("SignatureDoesNotMatch")]
    SignatureDoesNotMatch,
    /// 403: no live key has this access key id.
    #[error("InvalidAccessKeyId")]
    InvalidAccessKeyId,
    /// 403 `AccessDenied` with a message (`"Access Denied"` for a policy refusal).
    #[error("AccessDenied: {0}")]
    AccessDenied(Cow<'static, str>),
    /// 403 `AccessDenied` "Request has expired": a presigned URL past `X-Amz-Date + X-Amz-Expires`.
    #[error("AccessDenied: request has expired")]
    RequestExpired {
        /// The URL's `X-Amz-Expires` (seconds).
        expires_secs: u64,
        /// When the URL expired.
        expired_at: UnixTime,
        /// The server's time.
        server_time: UnixTime,
    },
    /// 403 `AccessDenied`: x-amz-* headers were present but not signed.
    #[error("AccessDenied: headers not signed: {0}")]
    HeadersNotSigned(String),
    /// 403: the request time is more than 15 minutes from the server's.
    #[error("RequestTimeTooSkewed")]
    RequestTimeTooSkewed {
        /// The request's `X-Amz-Date`.
        request_time: UnixTime,
        /// The server's time.
        server_time: UnixTime,
    },
    /// 400: the `Authorization` header could not be parsed or names the wrong scope.
    #[error("AuthorizationHeaderMalformed: {0}")]
    AuthorizationHeaderMalformed(Cow<'static, str>),
    /// 400: the presigned URL's `X-Amz-*` query parameters are malformed.
    #[error("AuthorizationQueryParametersError: {0}")]
    AuthorizationQueryParametersError(Cow<'static, str>),
    /// 400: the body's SHA-256 is not the `x-amz-content-sha256` the client signed.
    #[error("XAmzContentSHA256Mismatch")]
    XAmzContentSha256Mismatch {
        /// The client's value (hex).
        client: String,
        /// What the gateway computed (hex).
        computed: String,
    },
    /// 400: the body's MD5 is not the `Content-MD5` header.
    #[error("BadDigest: Content-MD5 mismatch")]
    BadDigest,
    /// 400 `BadDigest`: the body's `x-amz-checksum-<algorithm>` (header or trailer) did not match.
    #[error("BadDigest: {algorithm} mismatch")]
    ChecksumMismatch {
        /// The algorithm's name as S3 prints it (`CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`).
        algorithm: &'static str,
    },
    /// 400: `Content-MD5` is not the base64 of 16 bytes.
    #[error("InvalidDigest")]
    InvalidDigest,
    /// 411: a body without `Content-Length` where one is required.
    #[error("MissingContentLength")]
    MissingContentLength,
    /// 400: the body ended before the announced length, or an aws-chunked frame was incomplete.
    #[error("IncompleteBody: {0}")]
    IncompleteBody(Cow<'static, str>),
    /// 400: the body was longer than its announced length.
    #[error("InvalidRequest: body longer than announced")]
    BodyTooLong,
    /// 400: a request body's XML is not well-formed or not what the operation takes.
    #[error("MalformedXML")]
    MalformedXml,
    /// 400: the request is invalid (message says why).
    #[error("InvalidRequest: {0}")]
    InvalidRequest(Cow<'static, str>),
    /// 400: an argument is invalid (message says why).
    #[error("InvalidArgument: {0}")]
    InvalidArgument(Cow<'static, str>),
    /// 400: the URI could not be parsed (bad percent-encoding).
    #[error("InvalidURI")]
    InvalidUri,
    /// 400: the object or part is larger than allowed.
    #[error("EntityTooLarge")]
    EntityTooLarge,
    /// 404: the bucket does not exist (or is not reachable through the gateway).
    #[error("NoSuchBucket")]
    NoSuchBucket,
    /// 404: the key does not exist.
    #[error("NoSuchKey")]
    NoSuchKey,
    /// 404: the multipart upload does not exist.
    #[error("NoSuchUpload")]
    NoSuchUpload,
    /// 405: the method is not allowed on this resource.
    #[error("MethodNotAllowed")]
    MethodNotAllowed,
    /// 501: a feature the gateway does not implement (message says which).
    #[error("NotImplemented: {0}")]
    NotImplemented(Cow<'static, str>),
    /// 503: a dependency (key store, upstream) is unavailable; the cause is for the log only.
    #[error("ServiceUnavailable")]
    ServiceUnavailable(#[source] Option<BoxError>),
    /// 500: the gateway's own failure; the cause is for the log only.
    #[error("InternalError")]
    InternalError(#[source] Option<BoxError>),
}

impl S3Error {
    /// S3's error code (the `<Code>` element).
    pub fn code(&self) -> &'static str {
        match self {
            Self::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Self::InvalidAccessKeyId => "InvalidAccessKeyId",
            Self::AccessDenied(_) | Self::RequestExpired { .. } | Self::HeadersNotSigned(_) => "AccessDenied",
            Self::RequestTimeTooSkewed { .. } => "RequestTimeTooSkewed",
            Self::AuthorizationHeaderMalformed(_) => "AuthorizationHeaderMalformed",
            Self::AuthorizationQueryParametersError(_) => "AuthorizationQueryParametersError",
            Self::XAmzContentSha256Mismatch { .. } => "XAmzContentSHA256Mismatch",
            Self::BadDigest | Self::ChecksumMismatch { .. } => "BadDigest",
            Self::InvalidDigest => "InvalidDigest",
            Self::MissingContentLength => "MissingContentLength",
            Self::IncompleteBody(_) => "IncompleteBody",
            Self::BodyTooLong | Self::InvalidRequest(_) => "InvalidRequest",
            Self::MalformedXml => "MalformedXML",
            Self::InvalidArgument(_) => "InvalidArgument",
            Self::InvalidUri => "InvalidURI",
            Self::EntityTooLarge => "EntityTooLarge",
            Self::NoSuchBucket => "NoSuchBucket",
            Self::NoSuchKey => "NoSuchKey",
            Self::NoSuchUpload => "NoSuchUpload",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::NotImplemented(_) => "NotImplemented",
            Self::ServiceUnavailable(_) => "ServiceUnavailable",
            Self::InternalError(_) => "InternalError",
        }
    }

    /// The HTTP status S3 answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::SignatureDoesNotMatch
            | Self::InvalidAccessKeyId
            | Self::AccessDenied(_)
            | Self::RequestExpired { .. }
            | Self::HeadersNotSigned(_)
            | Self::RequestTimeTooSkewed { .. } => StatusCode::FORBIDDEN,
            Self::MissingContentLength => StatusCode::LENGTH_REQUIRED,
            Self::NoSuchBucket | Self::NoSuchKey | Self::NoSuchUpload => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::AuthorizationHeaderMalformed(_)
            | Self::AuthorizationQueryParametersError(_)
            | Self::XAmzContentSha256Mismatch { .. }
            | Self::BadDigest
            | Self::ChecksumMismatch { .. }
            | Self::InvalidDigest
            | Self::IncompleteBody(_)
            | Self::BodyTooLong
            | Self::InvalidRequest(_)
            | Self::MalformedXml
            | Self::InvalidArgument(_)
            | Self::InvalidUri
            | Self::EntityTooLarge => StatusCode::BAD_REQUEST,
        }
    }

    /// The human-readable `<Message>` (S3's wording where S3 has one). Never internal text.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::SignatureDoesNotMatch => "The request signature we calculated does not match the signature you provided. Check your key and signing method.".into(),
            Self::InvalidAccessKeyId => "The AWS Access Key Id you provided does not exist in our records.".into(),
            Self::AccessDenied(m)
            | Self::AuthorizationHeaderMalformed(m)
            | Self::AuthorizationQueryParametersError(m)
            | Self::InvalidRequest(m)
            | Self::InvalidArgument(m)
            | Self::NotImplemented(m) => m.clone(),
            Self::IncompleteBody(m) => m.clone(),
            Self::MalformedXml => {
                "The XML you provided was not well-formed or did not validate against our published schema".into()
            }
            Self::RequestExpired { .. } => "Request has expired".into(),
            Self::HeadersNotSigned(_) => {
                "There were headers present in the request which were not signed".into()
            }
            Self::RequestTimeTooSkewed { .. } => "The difference between the request time and the current time is too large.".into(),
            Self::XAmzContentSha256Mismatch { .. } => {
                "The provided 'x-amz-content-sha256' header does not match what was computed.".into()
            }
            Self::BadDigest => "The Content-MD5 you specified did not match what we received.".into(),
            Self::ChecksumMismatch { algorithm } => {
                format!("The {algorithm} you specified did not match the calculated checksum.").into()
            }
            Self::InvalidDigest => "The Content-MD5 you specified is not valid.".into(),
            Self::MissingContentLength => "You must provide the Content-Length HTTP header.".into(),
            Self::BodyTooLong => "The request body is longer than its announced length.".into(),
            Self::InvalidUri => "Couldn't parse the specified URI.".into(),
            Self::EntityTooLarge => "Your proposed upload exceeds the maximum allowed size".into(),
            Self::NoSuchBucket => "The specified bucket does not exist".into(),
            Self::NoSuchKey => "The specified key does not exist.".into(),
            Self::NoSuchUpload => "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.".into(),
            Self::MethodNotAllowed => "The specified method is not allowed against this resource.".into(),
            Self::ServiceUnavailable(_) => "Please reduce your request rate.".into(),
            Self::InternalError(_) => "We encountered an internal error. Please try again.".into(),
        }
    }

    /// Extra elements S3 adds after `<Message>` for this error (already escaped XML).
    fn extra_xml(&self, out: &mut String) {
        match self {
            Self::RequestTimeTooSkewed {
                request_time,
                server_time,
            } => {
                push_elem(out, "RequestTime", &amz_iso(*request_time));
                push_elem(out, "ServerTime", &amz_iso(*server_time));
                push_elem(out, "MaxAllowedSkewMilliseconds", &MAX_SKEW_MILLIS.to_string());
            }
            Self::RequestExpired {
                expires_secs,
                expired_at,
                server_time,
            } => {
                push_elem(out, "X-Amz-Expires", &expires_secs.to_string());
                push_elem(out, "Expires", &amz_iso(*expired_at));
                push_elem(out, "ServerTime", &amz_iso(*server_time));
            }
            Self::HeadersNotSigned(names) => push_elem(out, "HeadersNotSigned", names),
            Self::XAmzContentSha256Mismatch { client, computed } => {
                push_elem(out, "ClientComputedContentSHA256", client);
                push_elem(out, "S3ComputedContentSHA256", computed);
            }
            _ => {}
        }
    }

    /// The XML error document for this error about `resource` (the request path), with
    /// `request_id` (the gateway's id for the request, also sent as `x-amz-request-id`).
    pub fn to_xml(&self, resource: &str, request_id: &str) -> String {
        let mut out = String::with_capacity(256);
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>");
        push_elem(&mut out, "Code", self.code());
        push_elem(&mut out, "Message", &self.message());
        self.extra_xml(&mut out);
        push_elem(&mut out, "Resource", resource);
        push_elem(&mut out, "RequestId", request_id);
        out.push_str("</Error>");
        out
    }

    /// The HTTP response for this error: status, `Content-Type: application/xml`,
    /// `x-amz-request-id`, and the XML body (none for `HEAD`, as S3 does).
    pub fn to_response(&self, method: &Method, resource: &str, request_id: &str) -> Response<Full<Bytes>> {
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(self.to_xml(resource, request_id))
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert("x-amz-request-id", v);
        }
        resp
    }

    /// [`S3Error::to_response`] for a non-`HEAD` request.
    pub fn into_response(self, resource: &str, request_id: &str) -> Response<Full<Bytes>> {
        self.to_response(&Method::GET, resource, request_id)
    }
}

/// `2026-12-05T23:18:54Z` — S3's time format inside error documents.
fn amz_iso(t: UnixTime) -> String {
    t.to_rfc3339()
}

/// Appends `<name>escaped(value)</name>`.
fn push_elem(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    xml_escape_into(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// XML-escapes `s` into `out`; control characters XML 1.0 cannot carry become U+FFFD.
pub fn xml_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn codes_and_statuses() {
        let cases: Vec<(S3Error, &str, u16)> = vec![
            (S3Error::SignatureDoesNotMatch, "SignatureDoesNotMatch", 403),
            (S3Error::InvalidAccessKeyId, "InvalidAccessKeyId", 403),
            (S3Error::AccessDenied("Access Denied".into()), "AccessDenied", 403),
            (
                S3Error::AuthorizationHeaderMalformed("x".into()),
                "AuthorizationHeaderMalformed",
                400,
            ),
            (
                S3Error::XAmzContentSha256Mismatch {
                    client: String::new(),
                    computed: String::new(),
                },
                "XAmzContentSHA256Mismatch",
                400,
            ),
            (S3Error::BadDigest, "BadDigest", 400),
            (S3Error::ChecksumMismatch { algorithm: "CRC32" }, "BadDigest", 400),
            (S3Error::InvalidDigest, "InvalidDigest", 400),
            (S3Error::MissingContentLength, "MissingContentLength", 411),
            (S3Error::NoSuchKey, "NoSuchKey", 404),
            (S3Error::NoSuchBucket, "NoSuchBucket", 404),
            (S3Error::ServiceUnavailable(None), "ServiceUnavailable", 503),
            (S3Error::InternalError(None), "InternalError", 500),
        ];
        for (e, code, status) in cases {
            assert_eq!(e.code(), code);
            assert_eq!(e.status().as_u16(), status, "{code}");
        }
    }

    #[test]
    fn skew_document() {
        let e = S3Error::RequestTimeTooSkewed {
            request_time: UnixTime::from_secs(1_369_353_600),
            server_time: UnixTime::from_secs(1_369_353_600 + 3600),
        };
        let xml = e.to_xml("/b/k", "req-1");
        assert!(xml.contains("<Code>RequestTimeTooSkewed</Code>"), "{xml}");
        assert!(xml.contains("<RequestTime>2013-05-24T00:00:00Z</RequestTime>"));
        assert!(xml.contains("<ServerTime>2013-05-24T01:00:00Z</ServerTime>"));
        assert!(xml.contains("<MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds>"));
        assert!(xml.contains("<Resource>/b/k</Resource><RequestId>req-1</RequestId></Error>"));
    }

    #[test]
    fn expired_and_unsigned_header_documents() {
        let e = S3Error::RequestExpired {
            expires_secs: 86400,
            expired_at: UnixTime::from_secs(1_369_440_000),
            server_time: UnixTime::from_secs(1_369_440_001),
        };
        let xml = e.to_xml("/b/k", "id");
        assert!(xml.contains("<Code>AccessDenied</Code><Message>Request has expired</Message><X-Amz-Expires>86400</X-Amz-Expires><Expires>2013-05-25T00:00:00Z</Expires><ServerTime>2013-05-25T00:00:01Z</ServerTime>"), "{xml}");
        let xml = S3Error::HeadersNotSigned("x-amz-meta-a,x-amz-tagging".into()).to_xml("/b", "id");
        assert!(
            xml.contains("<HeadersNotSigned>x-amz-meta-a,x-amz-tagging</HeadersNotSigned>"),
            "{xml}"
        );
        // SignatureDoesNotMatch carries Code, Message, Resource, RequestId and nothing else
        // (S3 adds StringToSign and CanonicalRequest: never here).
        let xml = S3Error::SignatureDoesNotMatch.to_xml("/b", "id");
        assert_eq!(xml.matches('<').count(), 11, "{xml}");
        assert!(!xml.contains("StringToSign") && !xml.contains("CanonicalRequest"));
    }

    #[test]
    fn escapes_and_hides_internal_causes() {
        let cause: BoxError = "secret internal path /var/lib/kek".into();
        let e = S3Error::InternalError(Some(cause));
        let xml = e.to_xml("/b/<script>&\"'\u{1}", "id");
        assert!(!xml.contains("kek"), "{xml}");
        assert!(xml.contains("<Resource>/b/&lt;script&gt;&amp;&quot;&apos;\u{FFFD}</Resource>"));
    }

    #[tokio::test]
    async fn head_has_no_body() {
        let e = S3Error::NoSuchKey;
        let r = e.to_response(&Method::HEAD, "/b/k", "id");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()["content-type"], "application/xml");
        let body = r.into_body().collect().await.map(|b| b.to_bytes());
        assert!(matches!(body, Ok(b) if b.is_empty()));
        let r = S3Error::NoSuchKey.into_response("/b/k", "id");
        let body = r.into_body().collect().await.map(|b| b.to_bytes());
        assert!(matches!(body, Ok(b) if b.starts_with(b"<?xml")));
    }
}
