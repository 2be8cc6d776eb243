//! Query strings as typed structs: each route's parameters are one `Deserialize` +
//! `utoipa::IntoParams` struct, which both reads the request ([`parse`]) and documents the
//! route's parameters, so the two cannot drift.
//!
//! A parameter may be given more than once: a `Vec` field takes every value (`?status=queued&
//! status=running`), any other the last one. Refusals name the parameter
//! (`limit: "0" must be ...`), and an unknown one lists those there are (`unknown query parameter
//! "x": use status, limit or before`), so structs are `#[serde(deny_unknown_fields)]` and their
//! fields' types say what is wrong with a value in their `Deserialize` (see [`text`]).
//!
//! A handler parses its query itself, after it has found what its path names, rather than
//! through an extractor: an unknown run is a 404 whatever its query says.

use std::collections::HashMap;
use std::fmt;

use serde::de::value::SeqDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserializer, forward_to_deserialize_any};

use super::error::ApiError;

/// Reads a query string (`None`: there is none) into `T`.
pub fn parse<T: DeserializeOwned>(query: Option<&str>) -> Result<T, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    // Each key once, with its values, in the order the keys first appear.
    let mut params: Vec<(String, Vec<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (key, value) in pairs {
        match index.get(&key) {
            Some(&i) => params[i].1.push(value),
            None => {
                index.insert(key.clone(), params.len());
                params.push((key, vec![value]));
            }
        }
    }
    T::deserialize(Params {
        params: params.into_iter(),
        value: None,
    })
    .map_err(|Refusal(message)| ApiError::BadRequest(message))
}

/// Reads a parameter's value with `parse`, whose error says what is wrong with it (the
/// parameter's name is put in front): for the `Deserialize` of a parameter's type.
pub fn text<'de, D, T, F>(deserializer: D, parse: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct Text<F>(F);

    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for Text<F> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("text")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
            (self.0)(value).map_err(E::custom)
        }
    }

    deserializer.deserialize_str(Text(parse))
}

/// What is wrong with a query: the client's answer, as it is.
#[derive(Debug)]
struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl de::Error for Refusal {
    fn custom<T: fmt::Display>(message: T) -> Refusal {
        Refusal(message.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Refusal {
        Refusal(format!(
            "unknown query parameter {field:?}: use {}",
            one_of(expected)
        ))
    }
}

/// `a`, `a or b`, `a, b or c`.
fn one_of(names: &[&str]) -> String {
    match names {
        [] => "none".into(),
        [only] => only.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The query as a map of parameter names to their values.
struct Params {
    params: std::vec::IntoIter<(String, Vec<String>)>,
    /// The values of the key just read, with it.
    value: Option<(String, Vec<String>)>,
}

impl<'de> Deserializer<'de> for Params {
    type Error = Refusal;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        visitor.visit_map(self)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for Params {
    type Error = Refusal;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Refusal> {
        let Some((key, values)) = self.params.next() else {
            return Ok(None);
        };
        let field = seed.deserialize(key.clone().into_deserializer())?;
        self.value = Some((key, values));
        Ok(Some(field))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refusal> {
        let (key, values) = self
            .value
            .take()
            .ok_or_else(|| Refusal("a query value without its key".into()))?;
        seed.deserialize(Values(values))
            .map_err(|Refusal(e)| Refusal(format!("{key}: {e}")))
    }
}

/// The values one parameter was given (at least one): all of them for a sequence, else the
/// last.
struct Values(Vec<String>);

impl<'de> Deserializer<'de> for Values {
    type Error = Refusal;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        visitor.visit_string(self.0.into_iter().last().unwrap_or_default())
    }

    /// A parameter that is there is `Some`, even with an empty value (`?tail=`), which its type
    /// then reads.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        visitor.visit_seq(SeqDeserializer::new(self.0.into_iter()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct tuple tuple_struct map struct enum identifier
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    /// A number of at most 10, as a parameter type says what is wrong with a value.
    #[derive(Debug, PartialEq)]
    struct Small(u8);

    impl<'de> Deserialize<'de> for Small {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Small, D::Error> {
            text(d, |v| {
                v.parse()
                    .ok()
                    .filter(|n| *n <= 10)
                    .map(Small)
                    .ok_or_else(|| format!("{v:?} is not a number up to 10"))
            })
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Params {
        one: Option<Small>,
        many: Option<Vec<Small>>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }

    fn parsed(query: &str) -> Result<Params, String> {
        parse::<Params>(Some(query)).map_err(|e| e.to_string())
    }

    #[test]
    fn parameters_are_read_into_their_fields() {
        let none = Params {
            one: None,
            many: None,
            kind: None,
        };
        assert_eq!(parse::<Params>(None).unwrap(), none);
        assert_eq!(parsed("").unwrap(), none);
        let got = parsed("many=1&one=2&type=x&many=3&one=4").unwrap();
        assert_eq!(got.one, Some(Small(4)), "the last value of a single one");
        assert_eq!(
            got.many,
            Some(vec![Small(1), Small(3)]),
            "every value, in order"
        );
        assert_eq!(got.kind.as_deref(), Some("x"));
        assert_eq!(parsed("type=").unwrap().kind.as_deref(), Some(""));
        assert_eq!(
            parsed("type=a%20b+c").unwrap().kind.as_deref(),
            Some("a b c")
        );
    }

    #[test]
    fn refusals_name_the_parameter() {
        assert_eq!(
            parsed("one=11").unwrap_err(),
            "one: \"11\" is not a number up to 10"
        );
        assert_eq!(
            parsed("many=1&many=x").unwrap_err(),
            "many: \"x\" is not a number up to 10"
        );
        assert_eq!(
            parsed("one=").unwrap_err(),
            "one: \"\" is not a number up to 10"
        );
        assert_eq!(
            parsed("one=1&ones=2").unwrap_err(),
            "unknown query parameter \"ones\": use one, many or type"
        );
        assert_eq!(one_of(&["a"]), "a");
        assert_eq!(one_of(&["a", "b"]), "a or b");
    }

    /// Any bytes decode as a query (those that are not UTF-8 once percent-decoded become
    /// U+FFFD), so `parse`'s "bad query string" is a guard no query reaches: what is wrong is
    /// said by the parameter's own refusal.
    #[test]
    fn any_bytes_are_a_query_string() {
        assert_eq!(
            parsed("type=%FF").unwrap().kind.as_deref(),
            Some("\u{fffd}")
        );
        assert_eq!(
            parsed("type=%&type=%zz").unwrap().kind.as_deref(),
            Some("%zz")
        );
        assert!(parsed("&&type=x&").is_ok());
        assert_eq!(
            parsed("one=%FF").unwrap_err(),
            "one: \"\u{fffd}\" is not a number up to 10"
        );
        assert_eq!(
            parsed("%FF=1").unwrap_err(),
            "unknown query parameter \"\u{fffd}\": use one, many or type"
        );
    }
}
