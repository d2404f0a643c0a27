//! A `--shared-table` URL, checked with the settings and shown without its password. Apart
//! from the shared table itself, so the settings need not import it.

use redis::IntoConnectionInfo;

/// Checks that `url` is a Redis URL (`redis://` or `rediss://`); the reason when not.
///
/// # Errors
/// The URL's scheme is not redis/rediss, or the client cannot parse it.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("not a redis:// or rediss:// URL".to_string());
    }
    url.into_connection_info()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_reaches_a_message() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/0"),
            "redis://***@db:6379/0"
        );
        assert_eq!(redact("redis://db:6379"), "redis://db:6379");
    }
}
