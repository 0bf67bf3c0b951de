//! Request bodies: JSON parsing that names the bad field, normalisation, and the validator rules.
//!
//! Error messages are written here, never copied from serde or validator: both can quote the
//! submitted value, and a submitted value may be a password.

use std::borrow::Cow;

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::{Deserialize, Deserializer};
use validator::{ValidateArgs, ValidationError, ValidationErrors, ValidationErrorsKind};

use crate::error::{ApiError, FieldError};
use crate::password;

/// The runtime rules that body validation needs (the `validator` context of every body).
#[derive(Debug, Clone)]
pub struct Rules {
    pub password_min_length: usize,
}

/// Emails are trimmed and lower-cased before validation, storage and comparison, and their
/// domain is put in its IDNA ASCII form after UTS-46 mapping: `a@exämple.com`,
/// `a@xn--exmple-cua.com`, `a@ｅxample.com` (fullwidth) and `a@example。com` all become one
/// address. An address holding a [refused character](refused_char), or whose domain does not
/// map, is left as sent (trimmed and lower-cased) for [`valid_email`] to refuse: the mapping
/// would silently drop some of those characters.
pub fn normalized_email(email: &str) -> String {
    let email = email.trim().to_lowercase();
    if email.chars().any(refused_char) {
        return email;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return email;
    };
    match ascii_domain(domain) {
        Some(Cow::Owned(ascii)) => format!("{local}@{ascii}"),
        Some(Cow::Borrowed(_)) | None => email,
    }
}

/// A domain in its IDNA ASCII form after UTS-46 mapping (STD3 rules: letters, digits, hyphens
/// and dots only), borrowed when it already is; `None` when it does not map. An address literal
/// (`[192.0.2.1]`) is no domain name and is kept as it is.
fn ascii_domain(domain: &str) -> Option<Cow<'_, str>> {
    if domain.starts_with('[') {
        return Some(Cow::Borrowed(domain));
    }
    idna::domain_to_ascii_cow(domain.as_bytes(), idna::AsciiDenyList::STD3).ok()
}

/// A character no address may hold, in the local part or the domain: a control character, a
/// bidirectional control (U+202E, U+2066–2069, …) or a default-ignorable one (zero-width space,
/// soft hyphen, ZWJ/ZWNJ, U+FEFF, variation selectors, …), from the Unicode character database.
/// Such characters are invisible, so two addresses that differ only by them look the same.
pub fn refused_char(c: char) -> bool {
    use icu_properties::CodePointSetData;
    use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint};
    c.is_control()
        || CodePointSetData::new::<BidiControl>().contains(c)
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// [`normalized_email`] for serde's `deserialize_with`.
pub fn normalize_email<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(normalized_email(&String::deserialize(d)?))
}

/// The field a serde "missing field `x`" message names.
pub fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Names are trimmed; an empty one becomes null.
pub fn normalize_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty()))
}

/// An email as [`normalized_email`] leaves it: no refused character, at most 254 characters
/// (counted after the domain's mapping), a domain that maps, and a valid address.
pub fn valid_email(email: &str) -> Result<(), ValidationError> {
    use validator::ValidateEmail;
    if email.chars().any(refused_char) {
        return Err(ValidationError::new("characters").with_message(
            "must not contain control, invisible or text-direction characters".into(),
        ));
    }
    if email.chars().count() > 254 {
        return Err(
            ValidationError::new("length").with_message("must be at most 254 characters".into())
        );
    }
    if let Some((_, domain)) = email.rsplit_once('@')
        && ascii_domain(domain).is_none()
    {
        return Err(ValidationError::new("domain")
            .with_message("must have a valid domain name after the '@'".into()));
    }
    if !email.validate_email() {
        return Err(
            ValidationError::new("email").with_message("must be a valid email address".into())
        );
    }
    Ok(())
}

/// For PATCH: absent stays `None` (with `#[serde(default)]`); null or an empty name becomes
/// `Some(None)` (clear it); a name becomes `Some(Some(trimmed))`.
pub fn patch_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    normalize_name(d).map(Some)
}

/// A full name is at most 100 characters, none of them a control character (a NUL or a line
/// break has no place in a name, and PostgreSQL cannot store a NUL).
pub fn name_length(name: &str) -> Result<(), ValidationError> {
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new("characters")
            .with_message("must not contain control characters".into()));
    }
    if name.chars().count() > 100 {
        return Err(
            ValidationError::new("length").with_message("must be at most 100 characters".into())
        );
    }
    Ok(())
}

/// The registration rules for a new password (length in characters and bytes, the common list).
pub fn new_password(password: &str, rules: &Rules) -> Result<(), ValidationError> {
    password::check_new_password(password, rules.password_min_length)
        .map_err(|message| ValidationError::new("password").with_message(Cow::Owned(message)))
}

/// A password presented for checking (login, current password): at most 72 bytes, so that a
/// longer one is refused instead of being compared after bcrypt's truncation.
pub fn presented_password(password: &str) -> Result<(), ValidationError> {
    if password.is_empty() {
        return Err(ValidationError::new("required").with_message("must not be empty".into()));
    }
    if password::too_long(password) {
        return Err(ValidationError::new("too_long").with_message(password::TOO_LONG.into()));
    }
    Ok(())
}

/// A second-factor code: 6 ASCII digits, or a recovery code as issued (case and `-` ignored).
pub fn mfa_code(code: &str) -> Result<(), ValidationError> {
    match crate::mfa::Code::parse(code) {
        Some(_) => Ok(()),
        None => Err(ValidationError::new("code").with_message(
            "must be the 6 digits of the authenticator app, or a recovery code".into(),
        )),
    }
}

/// Parses and validates a JSON body: malformed JSON, a missing or mistyped field and every failed
/// rule become a 400 whose `errors` name the fields.
pub fn parse_json<T>(body: &[u8], rules: &Rules) -> Result<T, ApiError>
where
    T: DeserializeOwned + for<'a> ValidateArgs<'a, Args = &'a Rules>,
{
    if !body.trim_ascii_start().starts_with(b"{") {
        // serde would read a struct from an array too; the contract's bodies are objects.
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => ApiError::BadRequest("The body must be a JSON object".into()),
                Err(err) => malformed(&err),
            },
        );
    }
    // serde keeps one of two values under one key without a word: a first pass refuses them.
    let mut de = serde_json::Deserializer::from_slice(body);
    match duplicates::FirstDuplicate.deserialize(&mut de) {
        Ok(None) => {}
        Ok(Some(path)) => return Err(duplicate_key(&path)),
        // This pass accepts any JSON value, so what it refuses is malformed JSON.
        Err(err) => return Err(malformed(&err)),
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(value) => value,
        Err(err) => return Err(json_error(err, body)),
    };
    // The object must be the whole body: `{…} x` or `{…}{…}` is malformed, whitespace is fine.
    de.end().map_err(|err| malformed(&err))?;
    validate(&value, rules)?;
    Ok(value)
}

/// Validates an already parsed body (the form login goes through here too).
pub fn validate<T>(value: &T, rules: &Rules) -> Result<(), ApiError>
where
    T: for<'a> ValidateArgs<'a, Args = &'a Rules>,
{
    value
        .validate_with_args(rules)
        .map_err(|errors| ApiError::Validation(field_errors(&errors)))
}

fn json_error(err: serde_path_to_error::Error<serde_json::Error>, body: &[u8]) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if !inner.is_data() {
        // serde_json reports some type errors (a number where an enum is expected) as syntax
        // errors: valid JSON means the field's value was the problem.
        if path != "." && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            return ApiError::Validation(vec![FieldError::new(path, "has an invalid value")]);
        }
        return malformed(&inner);
    }
    let message = inner.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m);
    if let Some(name) = missing_field(message) {
        let field = if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return ApiError::Validation(vec![FieldError::new(field, "is required")]);
    }
    if path == "." {
        return ApiError::BadRequest("The body must be a JSON object".into());
    }
    // "invalid type: string \"x\", expected u32": keep only what was expected, never the value.
    let expected = message
        .rsplit_once(", expected ")
        .or_else(|| message.rsplit_once("expected "))
        .map(|(_, e)| e.trim());
    let text = match expected {
        Some(e) => format!("must be {}", e.replace('`', "")),
        None => "has an invalid value".to_owned(),
    };
    ApiError::Validation(vec![FieldError::new(path, text)])
}

/// A key given twice in one object. The key is named when it looks like a field name (every
/// field of every body does); any other key is submitted text, and is not echoed.
fn duplicate_key(path: &[duplicates::Segment]) -> ApiError {
    let plain = |key: &str| {
        (1..=64).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let nameable = path.iter().all(|segment| match segment {
        duplicates::Segment::Key(key) => plain(key),
        duplicates::Segment::Index(_) => true,
    });
    if !nameable {
        return ApiError::BadRequest("A key appears more than once in a JSON object".into());
    }
    let mut field = String::new();
    for segment in path {
        match segment {
            duplicates::Segment::Key(key) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            duplicates::Segment::Index(i) => field.push_str(&format!("[{i}]")),
        }
    }
    ApiError::Validation(vec![FieldError::new(field, "appears more than once")])
}

/// The first pass over a JSON body: the first key that appears twice in one object.
mod duplicates {
    use std::borrow::Cow;
    use std::collections::HashSet;
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{DeserializeSeed, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};

    /// A step of the path to a repeated key, outermost first once complete.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Segment {
        Key(String),
        Index(usize),
    }

    /// Walks any JSON value, objects and arrays nested in it too, and gives the path to the first
    /// key that appears a second time in its object (`None` when every key is unique). The rest
    /// of the value is read (and ignored) once one is found, so the input is consumed whole.
    pub struct FirstDuplicate;

    /// The path is built from the inside out, while the walk returns: nothing is allocated for
    /// a path unless a duplicate is found.
    type Found = Option<Vec<Segment>>;

    fn outermost_first(found: Found) -> Found {
        found.map(|mut path| {
            path.reverse();
            path
        })
    }

    impl<'de> DeserializeSeed<'de> for FirstDuplicate {
        type Value = Found;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_any(Walk).map(outermost_first)
        }
    }

    /// The walk proper; its paths are innermost first.
    struct Walk;

    impl<'de> DeserializeSeed<'de> for Walk {
        type Value = Found;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk {
        type Value = Found;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_bool<E: Error>(self, _: bool) -> Result<Found, E> {
            Ok(None)
        }

        fn visit_i64<E: Error>(self, _: i64) -> Result<Found, E> {
            Ok(None)
        }

        fn visit_u64<E: Error>(self, _: u64) -> Result<Found, E> {
            Ok(None)
        }

        fn visit_f64<E: Error>(self, _: f64) -> Result<Found, E> {
            Ok(None)
        }

        fn visit_str<E: Error>(self, _: &str) -> Result<Found, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Found, E> {
            Ok(None)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Found, A::Error> {
            let mut index = 0;
            while let Some(found) = seq.next_element_seed(Walk)? {
                if let Some(mut path) = found {
                    path.push(Segment::Index(index));
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Some(path));
                }
                index += 1;
            }
            Ok(None)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key_seed(Key)? {
                let found = if seen.contains(&key) {
                    map.next_value::<IgnoredAny>()?;
                    Some(Vec::new())
                } else {
                    map.next_value_seed(Walk)?
                };
                if let Some(mut path) = found {
                    path.push(Segment::Key(key.into_owned()));
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    return Ok(Some(path));
                }
                seen.insert(key);
            }
            Ok(None)
        }
    }

    /// An object's key as serde_json decodes it (escapes resolved, so `"e\u006dail"` is
    /// `email`), borrowed from the body when it holds no escape.
    struct Key;

    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Cow<'de, str>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for Key {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object key")
        }

        fn visit_borrowed_str<E: Error>(self, key: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(key))
        }

        fn visit_str<E: Error>(self, key: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(key.to_owned()))
        }
    }
}

/// Syntax, EOF or I/O errors: the position is given, never the content.
fn malformed(err: &serde_json::Error) -> ApiError {
    ApiError::BadRequest(format!(
        "Malformed JSON at line {} column {}",
        err.line(),
        err.column()
    ))
}

/// One entry per bad field (its first message), sorted by field name.
pub fn field_errors(errors: &ValidationErrors) -> Vec<FieldError> {
    let mut out: Vec<FieldError> = errors
        .errors()
        .iter()
        .filter_map(|(field, kind)| match kind {
            ValidationErrorsKind::Field(list) => list.first().map(|e| {
                let message = e
                    .message
                    .as_deref()
                    .map_or_else(|| format!("is not valid ({})", e.code), str::to_owned);
                FieldError::new(field.to_string(), message)
            }),
            _ => Some(FieldError::new(field.to_string(), "is not valid")),
        })
        .collect();
    out.sort_by(|a, b| a.field.cmp(&b.field));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use validator::Validate;

    #[derive(Debug, Deserialize, Validate)]
    #[validate(context = Rules)]
    struct Sample {
        #[serde(deserialize_with = "normalize_email")]
        #[validate(email(message = "must be a valid email address"))]
        email: String,
        #[validate(custom(function = "new_password", use_context))]
        password: String,
        #[serde(default, deserialize_with = "normalize_name")]
        full_name: Option<String>,
        #[serde(default)]
        age: u32,
    }

    const RULES: Rules = Rules {
        password_min_length: 8,
    };

    fn parse(body: &str) -> Result<Sample, ApiError> {
        parse_json(body.as_bytes(), &RULES)
    }

    fn fields(err: ApiError) -> Vec<(String, String)> {
        match err {
            ApiError::Validation(list) => list.into_iter().map(|e| (e.field, e.message)).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn normalizes() {
        let s = parse(
            r#"{"email":"  Alice@Example.COM ","password":"MyStrongPass123","full_name":"  "}"#,
        )
        .unwrap();
        assert_eq!(s.email, "alice@example.com");
        assert_eq!(s.full_name, None);
        assert_eq!(s.age, 0);
    }

    #[test]
    fn every_bad_field_at_once_and_no_value_echoed() {
        let err = parse(r#"{"email":"nope","password":"secret1"}"#).unwrap_err();
        let f = fields(err);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].0, "email");
        assert_eq!(f[1].0, "password");
        assert!(!f[1].1.contains("secret1"));
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        assert_eq!(
            fields(parse(r#"{"email":"a@b.co"}"#).unwrap_err())[0].0,
            "password"
        );
        let f = fields(parse(r#"{"email":"a@b.co","password":"x","age":"hunter22"}"#).unwrap_err());
        assert_eq!(f[0].0, "age");
        assert!(!f[0].1.contains("hunter22"), "{}", f[0].1);
        let f = fields(parse(r#"{"email":"a@b.co","password":12345678}"#).unwrap_err());
        assert_eq!(f[0].0, "password");
        assert!(!f[0].1.contains("12345678"), "{}", f[0].1);
    }

    #[test]
    fn malformed_json() {
        assert!(matches!(
            parse("{\"email\": "),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse("[1,2]"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse(""), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn nothing_but_whitespace_may_follow_the_object() {
        let body = r#"{"email":"a@b.co","password":"MyStrongPass123"}"#;
        for tail in [" x", "{}", r#"{"email":"c@d.co"}"#, "]", " 1", "\0"] {
            let err = parse(&format!("{body}{tail}")).unwrap_err();
            match err {
                ApiError::BadRequest(detail) => assert!(detail.starts_with("Malformed JSON")),
                other => panic!("{tail:?}: {other:?}"),
            }
        }
        assert!(parse(&format!("{body} \r\n\t ")).is_ok());
    }

    #[test]
    fn look_alike_domains_are_one_address() {
        for sent in [
            "Dave@ｅxample.com",
            "dave@example。com",
            "dave@EXAMPLE.COM",
            " dave@example.com ",
        ] {
            assert_eq!(normalized_email(sent), "dave@example.com", "{sent}");
        }
        assert_eq!(
            normalized_email("dave@exämple.com"),
            "dave@xn--exmple-cua.com"
        );
        assert_eq!(
            normalized_email("dave@XN--EXMPLE-CUA.com"),
            "dave@xn--exmple-cua.com"
        );
        assert_eq!(normalized_email("dave@[192.0.2.1]"), "dave@[192.0.2.1]");
        for email in [
            "dave@xn--exmple-cua.com",
            "dave@example.com",
            "dave@[192.0.2.1]",
        ] {
            assert!(valid_email(email).is_ok(), "{email}");
        }
    }

    fn refusal(sent: &str) -> ValidationError {
        valid_email(&normalized_email(sent)).expect_err(sent)
    }

    #[test]
    fn invisible_and_control_characters_are_refused_anywhere() {
        let refused = [
            '\u{200B}',
            '\u{00AD}',
            '\u{200C}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{061C}',
            '\u{FE0F}',
            '\u{E0041}',
            '\u{0007}',
            '\u{007F}',
            '\u{0085}',
        ];
        for c in refused {
            for sent in [
                format!("da{c}ve@example.com"),
                format!("dave@exa{c}mple.com"),
            ] {
                // The mapping would drop some of them (a soft hyphen, a ZWJ): they must not
                // vanish before the check.
                assert_ne!(
                    normalized_email(&sent),
                    "dave@example.com",
                    "{:04X}",
                    c as u32
                );
                let err = refusal(&sent);
                assert_eq!(err.code, "characters", "{:04X}", c as u32);
                let message = err.message.unwrap_or_default();
                assert!(!message.contains("dave"), "{message}");
            }
        }
        assert!(!refused_char('ä') && !refused_char('ｅ') && !refused_char('-'));
    }

    #[test]
    fn the_length_limit_counts_the_mapped_address() {
        // Scattered ideographs: punycode packs neighbouring code points tightly, these not.
        let label: String = (0..20u32)
            .filter_map(|i| char::from_u32(0x4E00 + i * 7919 % 20000))
            .collect();
        let sent = format!("dave@{label}.{label}.{label}.{label}.com");
        assert!(sent.chars().count() <= 254);
        let mapped = normalized_email(&sent);
        assert!(mapped.chars().count() > 254, "{mapped}");
        assert_eq!(valid_email(&mapped).unwrap_err().code, "length");
    }

    #[test]
    fn a_domain_that_does_not_map_is_refused() {
        for sent in [
            "dave@exa_mple.com",
            "dave@xn--a.com",
            "dave@exa\u{FFFD}mple.com",
        ] {
            assert_eq!(refusal(sent).code, "domain", "{sent}");
        }
    }

    #[test]
    fn a_repeated_key_is_named() {
        let pass = r#""password":"MyStrongPass123""#;
        let cases = [
            (
                format!(r#"{{"email":"a@b.co","email":"c@d.co",{pass}}}"#),
                "email",
            ),
            (
                format!(r#"{{"email":"a@b.co",{pass},"e\u006dail":"c@d.co"}}"#),
                "email",
            ),
            (format!(r#"{{"email":"a@b.co",{pass},{pass}}}"#), "password"),
            (
                format!(r#"{{"email":"a@b.co",{pass},"x":{{"y":1,"y":2}}}}"#),
                "x.y",
            ),
            (
                format!(r#"{{"email":"a@b.co",{pass},"l":[{{"y":1}},{{"y":1,"y":[]}}]}}"#),
                "l[1].y",
            ),
            (
                format!(r#"{{"email":"a@b.co",{pass},"age":1,"age":"x"}}"#),
                "age",
            ),
        ];
        for (body, field) in cases {
            let f = fields(parse(&body).unwrap_err());
            assert_eq!(
                f,
                vec![(field.to_owned(), "appears more than once".to_owned())],
                "{body}"
            );
        }
        // One key in two objects is no repetition.
        let body = format!(r#"{{"email":"a@b.co",{pass},"x":{{"y":1}},"z":{{"y":1}},"l":[1,1]}}"#);
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn a_repeated_key_that_is_no_field_name_is_not_echoed() {
        let body = r#"{"email":"a@b.co","password":"MyStrongPass123","My Pass!":1,"My Pass!":2}"#;
        match parse(body).unwrap_err() {
            ApiError::BadRequest(detail) => assert!(!detail.contains("My Pass"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
