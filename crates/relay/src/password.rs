//! Passwords of `[[user]]` entries: Argon2 PHC strings (RFC 9106 Argon2id, the
//! argon2 crate's defaults: 19 MiB, 2 passes) or, discouraged, the password in clear.

use crate::config::UserConfig;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::OnceLock;

/// The PHC string of `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    // 16 random bytes (RFC 9106 recommends 128 bits) from rand's thread-local CSPRNG,
    // seeded from the OS.
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `phc` is an Argon2 PHC string this relay can verify against.
pub fn check_hash(phc: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(phc).map_err(|e| format!("not a PHC string ({e})"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "algorithm {} is not supported (argon2id, argon2i, argon2d)",
            parsed.algorithm
        ));
    }
    if parsed.hash.is_none() {
        return Err("the PHC string has no hash".into());
    }
    Ok(())
}

/// Whether `password` is the password of the user called `name`. Hashes take tens of
/// milliseconds by design (call from a blocking thread); an unknown user costs the
/// same as a known one, so the time does not tell which names exist.
pub fn verify(users: &[UserConfig], name: &str, password: &str) -> bool {
    let user = users.iter().find(|u| u.name == name);
    match user.map(|u| (&u.password, &u.password_hash)) {
        Some((_, Some(phc))) => verify_phc(phc, password),
        Some((Some(clear), None)) => constant_time_eq(clear.as_bytes(), password.as_bytes()),
        _ => {
            let _ = verify_phc(dummy_hash(), password);
            false
        }
    }
}

fn verify_phc(phc: &str, password: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash to verify against for unknown names.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash("no such user").unwrap_or_default())
}

/// Compare without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, password: Option<&str>, hash: Option<String>) -> UserConfig {
        UserConfig {
            name: name.into(),
            password: password.map(Into::into),
            password_hash: hash,
            stream: None,
        }
    }

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let phc = hash("s3cret").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        check_hash(&phc).unwrap();
        let users = [user("app1", None, Some(phc))];
        assert!(verify(&users, "app1", "s3cret"));
        assert!(!verify(&users, "app1", "s3cret "));
        assert!(!verify(&users, "app2", "s3cret"));
    }

    #[test]
    fn a_clear_password_still_works() {
        let users = [user("app1", Some("pw"), None)];
        assert!(verify(&users, "app1", "pw"));
        assert!(!verify(&users, "app1", "px"));
    }

    #[test]
    fn bad_hashes_are_refused_with_the_reason() {
        assert!(
            check_hash("s3cret")
                .unwrap_err()
                .contains("not a PHC string")
        );
        let bcrypt_like = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(
            check_hash(bcrypt_like)
                .unwrap_err()
                .contains("not supported")
        );
    }
}
