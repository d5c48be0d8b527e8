//! Checks that several providers' documented rules share, run on what we are about to send
//! before any call (a failure is an `invalid_request` naming the field), and [`Violations`],
//! which gathers every rule a spec breaks so that `orgprov plan` and `orgprov bulk` can report
//! them all at once. Rules only one provider has stay in its module.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;

use serde_json::Value;

/// The documented rules an organization spec breaks, each message naming its field.
///
/// A provider's `prepare` runs every independent check and records each failure here, so one
/// pass finds all of them; a check that cannot run without an earlier one (an e-mail address
/// of an admin that is missing) is skipped instead of reported twice. Never empty as an error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Violations(Vec<String>);

impl Violations {
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records the failure of a check, if it failed; gives its value otherwise.
    pub fn check<T>(&mut self, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.0.push(message);
                None
            }
        }
    }

    /// Records a broken rule.
    pub fn push(&mut self, message: impl Into<String>) {
        self.0.push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each broken rule, in the order the checks ran.
    pub fn messages(&self) -> &[String] {
        &self.0
    }

    /// `value` when no rule was broken, else the violations.
    pub fn into_result<T>(self, value: T) -> Result<T, Violations> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

/// One message: the first check failed and nothing else could be checked.
impl From<String> for Violations {
    fn from(message: String) -> Violations {
        Violations(vec![message])
    }
}

impl From<&str> for Violations {
    fn from(message: &str) -> Violations {
        Violations(vec![message.to_owned()])
    }
}

/// The messages joined by `; ` (what an `org.failed` event's message says).
impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// Refuses a template setting (`[settings.<provider>]`) outside `known`.
pub fn known_settings(settings: &BTreeMap<String, Value>, provider: &str, known: &[&str]) -> Result<(), String> {
    match settings.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => {
            Err(format!("template setting {provider}.{unknown} is not supported (known: {})", known.join(", ")))
        }
        None => Ok(()),
    }
}

/// Refuses `organization.name` unless it keeps to the provider's naming `rules` (`ok`).
pub fn name_rules(ok: bool, name: &str, rules: &str) -> Result<(), String> {
    if !ok {
        return Err(format!("organization.name {name:?} breaks {rules}"));
    }
    Ok(())
}

/// Refuses metadata that would overwrite our ownership tag `tag`.
pub fn tag_free(metadata: &BTreeMap<String, Value>, tag: &str) -> Result<(), String> {
    if metadata.contains_key(tag) {
        return Err(format!("organization.metadata.{tag} is reserved for orgprov's ownership tag"));
    }
    Ok(())
}

/// Refuses `text` (the value of `field`) unless its length in characters is in `allowed`.
pub fn length(field: &str, text: &str, allowed: RangeInclusive<usize>, provider: &str) -> Result<(), String> {
    let n = text.chars().count();
    match (allowed.contains(&n), allowed.start()) {
        (true, _) => Ok(()),
        (false, 0) => Err(format!("{field} must be at most {} characters for {provider}, got {n}", allowed.end())),
        (false, min) => Err(format!("{field} must be {min}-{} characters for {provider}, got {n}", allowed.end())),
    }
}

/// `#rgb` or `#rrggbb`.
pub fn is_hex_colour(s: &str) -> bool {
    let hex = s.strip_prefix('#').unwrap_or("");
    (hex.len() == 3 || hex.len() == 6) && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// Refuses `organization.domains` unless every one is an e-mail domain ([`is_domain`]).
pub fn email_domains(domains: &[String]) -> Result<(), String> {
    match domains.iter().find(|d| !is_domain(d)) {
        Some(bad) => Err(format!("organization.domains: {bad:?} is not an e-mail domain like example.com")),
        None => Ok(()),
    }
}

/// A host name with at least two labels, as e-mail domains are (`example.com`).
pub fn is_domain(s: &str) -> bool {
    s.contains('.')
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Non-empty, of RFC 3986 unreserved characters only: safe in a URL path segment as it is.
pub fn is_url_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
}

/// An absolute `http://` or `https://` URL with a host, without spaces or control characters.
pub fn is_http_url(s: &str) -> bool {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| {
        !r.is_empty() && !r.starts_with('/') && !s.chars().any(|c| c.is_whitespace() || c.is_control())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_gather_every_failed_check() {
        let mut v = Violations::new();
        assert_eq!(v.check(Ok::<_, String>(3)), Some(3));
        assert_eq!(v.check(length("organization.name", "", 1..=3, "X")), None);
        v.push("admin.email is required");
        assert_eq!(v.messages().len(), 2);
        assert_eq!(v.to_string(), "organization.name must be 1-3 characters for X, got 0; admin.email is required");
        assert!(v.clone().into_result(()).is_err());
        assert_eq!(Violations::new().into_result(7), Ok(7));
    }

    #[test]
    fn unknown_settings_and_a_forged_tag_are_refused_by_name() {
        let settings = BTreeMap::from([("template_id".to_owned(), json!("t")), ("theme".to_owned(), json!("dark"))]);
        assert_eq!(known_settings(&settings, "secureauth", &["template_id", "theme"]), Ok(()));
        assert_eq!(
            known_settings(&settings, "secureauth", &["template_id"]),
            Err("template setting secureauth.theme is not supported (known: template_id)".into())
        );
        assert_eq!(name_rules(true, "acme", "X's rules"), Ok(()));
        assert_eq!(
            name_rules(false, "a b", "X's rules: no spaces"),
            Err("organization.name \"a b\" breaks X's rules: no spaces".into())
        );
        let metadata = BTreeMap::from([("orgprov_request_id".to_owned(), json!("forged"))]);
        assert!(tag_free(&metadata, "orgprov_request_id").unwrap_err().contains("reserved"));
        assert_eq!(tag_free(&metadata, "crm_tag"), Ok(()));
    }

    #[test]
    fn lengths_count_characters_and_name_the_field() {
        assert_eq!(length("organization.name", "é".repeat(3).as_str(), 1..=3, "Logto"), Ok(()));
        assert_eq!(
            length("organization.name", "", 1..=3, "Logto"),
            Err("organization.name must be 1-3 characters for Logto, got 0".into())
        );
        assert_eq!(
            length("organization.description", "abcd", 0..=3, "BioT"),
            Err("organization.description must be at most 3 characters for BioT, got 4".into())
        );
    }

    #[test]
    fn field_rules() {
        assert!(is_hex_colour("#abc") && is_hex_colour("#A1B2C3"));
        assert!(!is_hex_colour("abc") && !is_hex_colour("#abcd") && !is_hex_colour("#ggg") && !is_hex_colour("blue"));
        assert!(is_domain("acme.com") && is_domain("mail.acme-corp.co.uk"));
        assert_eq!(email_domains(&["acme.com".into(), "b.org".into()]), Ok(()));
        assert!(email_domains(&["acme.com".into(), "b".into()]).unwrap_err().contains("\"b\" is not an e-mail domain"));
        assert!(!is_domain("localhost") && !is_domain("a..b") && !is_domain("-a.com") && !is_domain("not a domain"));
        assert!(is_url_safe("acme-corp_1.x~") && !is_url_safe("") && !is_url_safe("a/b") && !is_url_safe("a b"));
        assert!(is_http_url("https://cdn.example/logo.png") && is_http_url("http://x"));
        for bad in ["logo.png", "ftp://x", "https://", "https:///path", "https://a b", "//cdn.example"] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }
}
