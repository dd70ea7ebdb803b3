//! [`Field`]: an optional wire field that remembers whether it was absent, `null` or set, so a
//! typed object re-serializes to exactly the JSON it was read from.
//!
//! Invariants: an absent member is never written (every `Field` member carries
//! `#[serde(default, skip_serializing_if = "Field::is_absent")]`), a `null` one is written as
//! `null`, and a set one as its value; readers that do not care about the difference use [`Field::get`], which
//! treats `null` like absent (as Go's decoder does for pointers, slices and maps).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An optional member of a JSON object: absent, `null`, or a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field<T>(Option<Option<T>>);

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self::absent()
    }
}

impl<T> Field<T> {
    /// The member is not there.
    pub const fn absent() -> Self {
        Self(None)
    }

    /// The member is there with the value `null`.
    pub const fn null() -> Self {
        Self(Some(None))
    }

    /// The member has `value`.
    pub const fn new(value: T) -> Self {
        Self(Some(Some(value)))
    }

    /// The value, if set (`null` reads as absent).
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref().and_then(Option::as_ref)
    }

    /// The value, mutably, if set.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_mut().and_then(Option::as_mut)
    }

    /// Sets the value (a `null` or absent member becomes this value).
    pub fn set(&mut self, value: T) {
        self.0 = Some(Some(value));
    }

    /// The value, set to `make()` first unless it is set.
    pub fn get_or_insert_with(&mut self, make: impl FnOnce() -> T) -> &mut T {
        self.0.get_or_insert(None).get_or_insert_with(make)
    }

    /// True when the member is not there (it is then not written).
    pub fn is_absent(&self) -> bool {
        self.0.is_none()
    }

    /// True when the member is there with the value `null`.
    pub fn is_null(&self) -> bool {
        matches!(self.0, Some(None))
    }

    /// True when the member has a value.
    pub fn is_set(&self) -> bool {
        matches!(self.0, Some(Some(_)))
    }
}

impl Field<String> {
    /// The text, or `""` when absent or `null`.
    pub fn as_str(&self) -> &str {
        self.get().map_or("", String::as_str)
    }
}

impl<T> Field<Vec<T>> {
    /// The items, or none when absent or `null`.
    pub fn as_slice(&self) -> &[T] {
        self.get().map_or(&[], Vec::as_slice)
    }
}

impl<T> From<T> for Field<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.get() {
            Some(v) => v.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self(Some(Option::<T>::deserialize(deserializer)?)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        #[serde(default, skip_serializing_if = "Field::is_absent")]
        a: Field<String>,
        #[serde(default, skip_serializing_if = "Field::is_absent")]
        b: Field<Vec<i64>>,
    }

    #[test]
    fn absent_null_and_set_round_trip() {
        for v in [
            json!({}),
            json!({"a": null}),
            json!({"a": "x", "b": []}),
            json!({"b": null}),
        ] {
            let s: S = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&s).unwrap(), v);
        }
        let mut s: S = serde_json::from_value(json!({"a": null})).unwrap();
        assert_eq!(s.a.as_str(), "");
        assert!(s.b.as_slice().is_empty());
        s.b.get_or_insert_with(Vec::new).push(3);
        s.a.set("y".into());
        assert_eq!(serde_json::to_value(&s).unwrap(), json!({"a": "y", "b": [3]}));
        assert!(serde_json::from_value::<S>(json!({"a": 1})).is_err());
    }
}
