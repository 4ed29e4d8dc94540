//! How a record, a spec or a step is stored: JSON without its top-level nulls and empty
//! lists, which read back as the same value (those fields default to `None` and empty), and
//! without what the reader knows anyway. The API still shows all of it, from the value read
//! back; in Redis it was about a fifth of a finished single-call job.
//!
//! Written in one pass: a serializer that takes the value's top-level fields one by one (a
//! struct's, or a map's when a field is flattened), writes each into a scratch buffer and
//! copies it out unless it is left out. (Going through `serde_json::Value` instead built a
//! tree of the whole value and wrote it again: 8 % of the worker's CPU in scenario 1.)

use serde::ser::{self, Impossible, Serialize, SerializeMap, SerializeStruct, Serializer};

pub(super) struct StoredForm {
    /// Fields the reader fills in again: a record's `id` is in its key, a step's `seq` is
    /// its place in the log.
    pub(super) derived: &'static [&'static str],
    /// Flags left out when `false`, their default.
    pub(super) unless_true: &'static [&'static str],
}

impl StoredForm {
    /// `value`'s stored form; `value` must serialize as a JSON object.
    pub(super) fn json<T: Serialize>(&self, value: &T) -> Result<String, serde_json::Error> {
        let mut out = Vec::with_capacity(256);
        value.serialize(TopLevel {
            form: self,
            out: &mut out,
        })?;
        // Only serde_json wrote into `out`, and only whole values.
        String::from_utf8(out).map_err(ser::Error::custom)
    }

    /// Whether a field whose value serialized as `value` is left out.
    fn leaves_out(&self, name: &str, value: &[u8]) -> bool {
        match value {
            b"null" | b"[]" => true,
            [b'[', ..] => false,
            b"false" => self.unless_true.contains(&name),
            _ => self.derived.contains(&name),
        }
    }
}

/// The value itself: only an object (a struct, or a map) has a stored form.
struct TopLevel<'a> {
    form: &'a StoredForm,
    out: &'a mut Vec<u8>,
}

/// The object's fields as they come.
struct Fields<'a> {
    form: &'a StoredForm,
    out: &'a mut Vec<u8>,
    /// The field being written: its value as JSON.
    scratch: Vec<u8>,
    /// A map's key as JSON (quoted), which comes before its value.
    key: Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    /// Writes the field `quoted_name` (its name as JSON) unless it is left out.
    fn field<V: Serialize + ?Sized>(&mut self, quoted_name: &[u8], value: &V) -> Result<(), Error> {
        // Field names are plain identifiers: quoted, they are the name between two quotes.
        let name = quoted_name
            .strip_prefix(b"\"")
            .and_then(|n| n.strip_suffix(b"\""))
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or_else(|| <Error as ser::Error>::custom("a stored form's keys are strings"))?;
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, value)?;
        if self.form.leaves_out(name, &self.scratch) {
            return Ok(());
        }
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        self.out.extend_from_slice(quoted_name);
        self.out.push(b':');
        self.out.extend_from_slice(&self.scratch);
        Ok(())
    }

    /// `name` as JSON, in the key buffer taken out (`named` puts it back, to be reused).
    fn quote(&mut self, name: &impl Serialize) -> Result<Vec<u8>, Error> {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        serde_json::to_writer(&mut key, name)?;
        Ok(key)
    }

    fn named<V: Serialize + ?Sized>(&mut self, key: Vec<u8>, value: &V) -> Result<(), Error> {
        let written = self.field(&key, value);
        self.key = key;
        written
    }

    fn end(self) -> Result<(), Error> {
        if self.first {
            self.out.push(b'{');
        }
        self.out.push(b'}');
        Ok(())
    }
}

type Error = serde_json::Error;

fn not_an_object() -> Error {
    ser::Error::custom("a stored form is written from an object")
}

impl<'a> TopLevel<'a> {
    fn fields(self) -> Fields<'a> {
        Fields {
            form: self.form,
            out: self.out,
            scratch: Vec::with_capacity(64),
            key: Vec::with_capacity(16),
            first: true,
        }
    }
}

/// Every kind of value but an object is refused.
macro_rules! refuse {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $method(self, $(_: $arg),*) -> Result<(), Error> {
            Err(not_an_object())
        })*
    };
}

impl<'a> Serializer for TopLevel<'a> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Fields<'a>;
    type SerializeStruct = Fields<'a>;
    type SerializeStructVariant = Impossible<(), Error>;

    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Error> {
        Err(not_an_object())
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Error> {
        Err(not_an_object())
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Error> {
        Err(not_an_object())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Error> {
        Err(not_an_object())
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        Err(not_an_object())
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Fields<'a>, Error> {
        Ok(self.fields())
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'a>, Error> {
        Ok(self.fields())
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        Err(not_an_object())
    }
}

impl SerializeStruct for Fields<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        let key = self.quote(&name)?;
        self.named(key, value)
    }

    fn end(self) -> Result<(), Error> {
        Fields::end(self)
    }
}

impl SerializeMap for Fields<'_> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.key = self.quote(&key)?;
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = std::mem::take(&mut self.key);
        self.named(key, value)
    }

    fn end(self) -> Result<(), Error> {
        Fields::end(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;

    /// What the stored form was before it was written in one pass: through a `Value`.
    fn through_value(form: &StoredForm, value: &impl Serialize) -> Value {
        let mut value = serde_json::to_value(value).unwrap();
        if let Value::Object(fields) = &mut value {
            fields.retain(|name, field| match field {
                Value::Null => false,
                Value::Array(items) => !items.is_empty(),
                Value::Bool(false) => !form.unless_true.contains(&name.as_str()),
                _ => !form.derived.contains(&name.as_str()),
            });
        }
        value
    }

    const FORM: StoredForm = StoredForm {
        derived: &["id"],
        unless_true: &["cached"],
    };

    #[derive(serde::Serialize)]
    struct Inner {
        kind: &'static str,
        cached: bool,
        empty: Vec<u8>,
    }

    #[derive(serde::Serialize)]
    struct Outer {
        id: u32,
        name: Option<String>,
        none: Option<String>,
        list: Vec<u32>,
        nested: Value,
        #[serde(flatten)]
        inner: Inner,
        odd: BTreeMap<String, bool>,
    }

    #[test]
    fn one_pass_leaves_out_what_the_value_tree_left_out_and_keeps_the_rest() {
        for (cached, list) in [(false, vec![]), (true, vec![1, 2])] {
            let value = Outer {
                id: 7,
                name: Some("quote \" and \\ and é".into()),
                none: None,
                list,
                nested: json!({"kept": null, "empty": [], "flag": false}),
                inner: Inner {
                    kind: "model",
                    cached,
                    empty: vec![],
                },
                odd: [("a\"b".to_owned(), false)].into(),
            };
            let written = FORM.json(&value).unwrap();
            let read: Value = serde_json::from_str(&written).unwrap();
            assert_eq!(read, through_value(&FORM, &value), "{written}");
            assert!(!written.contains("\"id\""), "{written}");
            assert_eq!(written.contains("cached"), cached, "{written}");
        }
        let empty: BTreeMap<String, Option<u8>> = [("gone".to_owned(), None)].into();
        assert_eq!(FORM.json(&empty).unwrap(), "{}");
    }

    #[test]
    fn only_an_object_has_a_stored_form() {
        for refused in [json!(1), json!("text"), json!([1]), json!(null)] {
            let err = FORM.json(&refused).unwrap_err();
            assert!(err.to_string().contains("from an object"), "{err}");
        }
        let numbered: BTreeMap<u8, u8> = [(1, 2)].into();
        assert!(FORM.json(&numbered).is_err());
    }
}
