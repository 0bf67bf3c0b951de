//! Request bodies: JSON parsing that names the bad field, normalisation, and the validator rules.
//!
//! Error messages are written here, never copied from serde or validator: both can quote the
//! submitted value, and a submitted value may be a password.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use validator::{ValidateArgs, ValidationError, ValidationErrors, ValidationErrorsKind};

use crate::error::{ApiError, FieldError};
use crate::password;

/// The runtime rules that body validation needs (the `validator` context of every body).
#[derive(Debug, Clone)]
pub struct Rules {
    pub password_min_length: usize,
}

/// Emails are trimmed and lower-cased before validation, storage and comparison.
pub fn normalized_email(email: &str) -> String {
    email.trim().to_lowercase()
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

/// An email (already trimmed and lower-cased): a valid address of at most 254 characters.
pub fn valid_email(email: &str) -> Result<(), ValidationError> {
    use validator::ValidateEmail;
    if email.chars().count() > 254 {
        return Err(
            ValidationError::new("length").with_message("must be at most 254 characters".into())
        );
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

/// A full name is at most 100 characters.
pub fn name_length(name: &str) -> Result<(), ValidationError> {
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
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = match serde_path_to_error::deserialize(de) {
        Ok(value) => value,
        Err(err) => return Err(json_error(err, body)),
    };
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
}
