//! HTTP details the simulated providers share: reading credentials (`Bearer`, HTTP Basic, OAuth2
//! `client_secret_basic`), form bodies, and the headers and markers put on answers. How each
//! provider words a refusal stays in its own module.

use std::time::SystemTime;

use axum::http::header::{AUTHORIZATION, DATE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use base64::Engine as _;

/// Response extension a provider handler sets to say whether the caller was authenticated;
/// the recording middleware copies it into [`crate::RecordedRequest::authorized`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Authorized(pub(crate) bool);

/// Response extension a provider handler sets to have the connection closed with no response.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

/// Marks `response` with whether the caller was authenticated and gives it a `Date` (clients
/// read rate-limit resets and token expiries against it).
pub(crate) fn authorized(mut response: Response, authorized: bool) -> Response {
    if let Ok(date) = HeaderValue::from_str(&http_date_now()) {
        response.headers_mut().insert(DATE, date);
    }
    response.extensions_mut().insert(Authorized(authorized));
    response
}

/// Adds `Retry-After` when there is a delay to name.
pub(crate) fn with_retry_after(mut response: Response, retry_after_secs: Option<u64>) -> Response {
    if let Some(secs) = retry_after_secs {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Current wall-clock seconds as an HTTP `Date` value.
pub(crate) fn http_date_now() -> String {
    httpdate::fmt_http_date(SystemTime::now())
}

/// Why a call has no bearer token to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoBearer {
    /// No `Authorization` header.
    Missing,
    /// A header that is not visible ASCII.
    Unreadable,
    /// Another scheme than `Bearer`, or no scheme at all.
    OtherScheme,
}

/// The token of `Authorization: Bearer <token>` (scheme in any case, token trimmed).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, NoBearer> {
    let value = headers.get(AUTHORIZATION).ok_or(NoBearer::Missing)?;
    let value = value.to_str().map_err(|_| NoBearer::Unreadable)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(NoBearer::OtherScheme),
    }
}

/// HTTP Basic credentials as sent (RFC 7617): `Authorization: Basic base64(id:secret)`.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// OAuth2 `client_secret_basic` (RFC 6749 §2.3.1): Basic credentials whose parts are also
/// form-url-encoded.
pub(crate) fn client_secret_basic(headers: &HeaderMap) -> Option<(String, String)> {
    let (id, secret) = basic_credentials(headers)?;
    Some((urlencoding::decode(&id).ok()?.into_owned(), urlencoding::decode(&secret).ok()?.into_owned()))
}

/// RFC 6749 §4.4: a token request must ask for the client-credentials grant. `Err` is the error
/// code and description of the 400 for another grant (worded by `unsupported`) or for none.
pub(crate) fn client_credentials_grant(
    grant_type: Option<&str>,
    unsupported: impl FnOnce(&str) -> String,
    missing: &str,
) -> Result<(), (&'static str, String)> {
    match grant_type {
        Some("client_credentials") => Ok(()),
        Some(other) => Err(("unsupported_grant_type", unsupported(other))),
        None => Err(("invalid_request", missing.to_owned())),
    }
}

/// The `key=value` pairs of an `application/x-www-form-urlencoded` body, still encoded.
pub(crate) fn form_pairs(text: &str) -> impl Iterator<Item = &str> {
    text.split('&').filter(|pair| !pair.is_empty())
}

/// Decodes one form pair (`+` is a space); `None` when a part is not UTF-8 once decoded.
pub(crate) fn decode_form_pair(pair: &str) -> Option<(String, String)> {
    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
    let decode = |s: &str| urlencoding::decode(&s.replace('+', " ")).ok().map(|c| c.into_owned());
    Some((decode(key)?, decode(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header value"));
        headers
    }

    #[test]
    fn bearer_tokens_are_read_in_any_case_and_trimmed() {
        assert_eq!(bearer_token(&with_authorization("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(&HeaderMap::new()), Err(NoBearer::Missing));
        assert_eq!(bearer_token(&with_authorization("Basic abc")), Err(NoBearer::OtherScheme));
        assert_eq!(bearer_token(&with_authorization("abc")), Err(NoBearer::OtherScheme));
        let mut unreadable = HeaderMap::new();
        unreadable.insert(AUTHORIZATION, HeaderValue::from_bytes(b"Bearer \xff").expect("header value"));
        assert_eq!(bearer_token(&unreadable), Err(NoBearer::Unreadable));
    }

    #[test]
    fn client_secret_basic_decodes_what_plain_basic_keeps() {
        // base64("id%3A1:s%2B") — a client id with a colon and a secret with a plus, encoded.
        let headers = with_authorization("Basic aWQlM0ExOnMlMkI=");
        assert_eq!(basic_credentials(&headers), Some(("id%3A1".to_owned(), "s%2B".to_owned())));
        assert_eq!(client_secret_basic(&headers), Some(("id:1".to_owned(), "s+".to_owned())));
        assert_eq!(basic_credentials(&with_authorization("Bearer aWQ6cw==")), None);
    }

    #[test]
    fn only_the_client_credentials_grant_is_accepted() {
        let unsupported = |other: &str| format!("no {other}");
        assert_eq!(client_credentials_grant(Some("client_credentials"), unsupported, "none"), Ok(()));
        assert_eq!(
            client_credentials_grant(Some("password"), unsupported, "none"),
            Err(("unsupported_grant_type", "no password".to_owned()))
        );
        assert_eq!(client_credentials_grant(None, unsupported, "none"), Err(("invalid_request", "none".to_owned())));
    }

    #[test]
    fn form_pairs_decode_plus_and_percent() {
        let pairs: Vec<_> = form_pairs("a=b+c&&d=%2Fe&flag").map(decode_form_pair).collect();
        assert_eq!(
            pairs,
            vec![
                Some(("a".to_owned(), "b c".to_owned())),
                Some(("d".to_owned(), "/e".to_owned())),
                Some(("flag".to_owned(), String::new())),
            ]
        );
        assert_eq!(decode_form_pair("k=%FF"), None);
    }
}
