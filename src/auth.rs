//! Per-call authentication with bearer tokens.
//!
//! The server reads a token file (`--auth-tokens`): one `TOKEN PRINCIPAL`
//! pair a line, `#` comments and blank lines allowed. Every call must carry
//! `authorization: Bearer <TOKEN>` metadata; [`AuthChecker`], a grpcio
//! `ServerChecker`, ends a call without a known token with UNAUTHENTICATED
//! before any handler runs. `grpc.health.v1.Health` and `grpc.reflection.*`
//! stay open, so probes and tooling need no token.
//!
//! Tokens are kept only as SHA-256 digests and a lookup compares the
//! presented token's digest with every entry in constant time, so the time a
//! lookup takes says nothing about how close a guess was. SIGHUP reloads the
//! file ([`reload_on_sighup`]); a file that does not parse
//! leaves the tokens in force unchanged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use grpcio::{CheckResult, Metadata, RpcContext, RpcStatus, RpcStatusCode, ServerChecker};

use crate::wire::AUTHORIZATION;
use log::{error, info};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Method prefixes any caller may use without a token.
pub const OPEN_METHOD_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// The tokens a server accepts, each with the principal it stands for.
#[derive(Debug)]
pub struct TokenTable {
    /// SHA-256 of each token, and its principal.
    entries: Vec<([u8; 32], String)>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// A token as it can travel in an HTTP/2 header value: visible ASCII.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
}

impl TokenTable {
    /// Parses a token file's text; `source` names it in errors, which are one
    /// line each: `tokens.txt:3: expected "TOKEN PRINCIPAL", got 3 fields`.
    pub fn parse(text: &str, source: &str) -> Result<TokenTable, String> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{source}:{}", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, principal] = fields[..] else {
                return Err(format!("{at}: expected \"TOKEN PRINCIPAL\", got {} fields", fields.len()));
            };
            if !is_token(token) {
                return Err(format!("{at}: the token has characters other than visible ASCII"));
            }
            let hash = digest(token.as_bytes());
            if !seen.insert(hash) {
                return Err(format!("{at}: this token is already listed on an earlier line"));
            }
            entries.push((hash, principal.to_string()));
        }
        if entries.is_empty() {
            return Err(format!("{source}: no tokens (expected lines \"TOKEN PRINCIPAL\")"));
        }
        Ok(TokenTable { entries })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<TokenTable, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        TokenTable::parse(&text, &path.display().to_string())
    }

    /// The principal of `token`. Compares against every entry without
    /// stopping at a match, in constant time per entry.
    pub fn lookup(&self, token: &[u8]) -> Option<&str> {
        let hash = digest(token);
        let mut found = u32::MAX;
        for (i, (entry, _)) in self.entries.iter().enumerate() {
            // The table has far fewer than u32::MAX entries (one a line).
            found.conditional_assign(&(i as u32), entry.ct_eq(&hash));
        }
        self.entries.get(found as usize).map(|(_, principal)| principal.as_str())
    }

    /// How many tokens it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The token table in force, shared by the checker, the handlers and the
/// reload thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Authenticator {
    /// Where [`Authenticator::reload`] reads from; `None` for a fixed table.
    path: Option<PathBuf>,
    /// Swapped whole on reload; readers clone the inner `Arc` and let go of
    /// the lock at once, so a reload never waits on a call.
    table: Arc<RwLock<Arc<TokenTable>>>,
}

impl Authenticator {
    /// Serves the tokens of the file at `path`; [`Authenticator::reload`] rereads it.
    pub fn from_file(path: &Path) -> Result<Authenticator, String> {
        let table = TokenTable::load(path)?;
        Ok(Authenticator { path: Some(path.to_path_buf()), table: Arc::new(RwLock::new(Arc::new(table))) })
    }

    /// Serves a fixed table.
    pub fn new(table: TokenTable) -> Authenticator {
        Authenticator { path: None, table: Arc::new(RwLock::new(Arc::new(table))) }
    }

    fn current(&self) -> Arc<TokenTable> {
        // A poisoned lock only means a writer panicked between two whole-Arc
        // swaps; the table inside is always a complete one.
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Rereads the token file; on error the tokens in force stay. Returns
    /// how many tokens are now accepted. Blocking file I/O: never call it on
    /// a completion-queue thread.
    pub fn reload(&self) -> Result<usize, String> {
        let path = self.path.as_ref().ok_or("these tokens were not read from a file")?;
        let table = Arc::new(TokenTable::load(path)?);
        let count = table.len();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        Ok(count)
    }

    /// Who the call's bearer token says the caller is, or the
    /// UNAUTHENTICATED status to end it with.
    pub fn authenticate(&self, headers: &Metadata) -> Result<String, RpcStatus> {
        let unauthenticated = |message: &str| RpcStatus::with_message(RpcStatusCode::UNAUTHENTICATED, message.into());
        let value = headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(AUTHORIZATION)).map(|(_, value)| value);
        let Some(value) = value else {
            return Err(unauthenticated(
                "missing credentials: this server needs `authorization: Bearer <token>` metadata on every call",
            ));
        };
        let token = bearer_token(value)
            .ok_or_else(|| unauthenticated("the authorization metadata is not of the form `Bearer <token>`"))?;
        match self.current().lookup(token) {
            Some(principal) => Ok(principal.to_string()),
            None => Err(unauthenticated("invalid bearer token")),
        }
    }

    /// The `ServerChecker` that enforces these tokens on every call.
    pub fn checker(&self) -> AuthChecker {
        AuthChecker { auth: self.clone() }
    }
}

/// The token of an `authorization` value `Bearer <token>` (the scheme is
/// case-insensitive, RFC 6750).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let split = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(split);
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let end = rest.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
    scheme.eq_ignore_ascii_case(b"bearer").then_some(&rest[start..end])
}

/// Handles SIGHUP for the life of the process, on a thread of its own: it
/// reloads `auth`'s token file, or, on a server without tokens, logs that
/// there is nothing to reload (SIGHUP's default action would end the server).
pub fn reload_on_sighup(auth: Option<Authenticator>) -> Result<(), String> {
    use signal_hook::consts::SIGHUP;
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP]).map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    std::thread::Builder::new()
        .name("sighup".to_string())
        .spawn(move || {
            for _ in signals.forever() {
                match auth.as_ref().map(Authenticator::reload) {
                    Some(Ok(count)) => info!("SIGHUP: reloaded {count} token(s)"),
                    Some(Err(e)) => error!("SIGHUP: keeping the previous tokens: {e}"),
                    None => info!("SIGHUP: nothing to reload (the server runs without --auth-tokens)"),
                }
            }
        })
        .map_err(|e| format!("cannot start the SIGHUP thread: {e}"))?;
    Ok(())
}

/// Whether `method` (`/package.Service/Method`) may be called without a token.
pub fn is_open(method: &[u8]) -> bool {
    OPEN_METHOD_PREFIXES.iter().any(|prefix| method.starts_with(prefix.as_bytes()))
}

/// Ends every call that is not to an open method and has no valid bearer
/// token with UNAUTHENTICATED, before its handler runs.
#[derive(Clone)]
pub struct AuthChecker {
    auth: Authenticator,
}

impl ServerChecker for AuthChecker {
    fn check(&mut self, ctx: &RpcContext) -> CheckResult {
        if is_open(ctx.method()) {
            return CheckResult::Continue;
        }
        match self.auth.authenticate(ctx.request_headers()) {
            Ok(_) => CheckResult::Continue,
            Err(status) => CheckResult::Abort(status),
        }
    }

    fn box_clone(&self) -> Box<dyn ServerChecker> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<TokenTable, String> {
        TokenTable::parse(text, "tokens")
    }

    #[test]
    fn a_token_file_maps_tokens_to_principals() {
        let t = table("# who may call\n\nsecret-a alice\n  secret-b\tbob  \n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(b"secret-a"), Some("alice"));
        assert_eq!(t.lookup(b"secret-b"), Some("bob"));
        assert_eq!(t.lookup(b"secret-"), None);
        assert_eq!(t.lookup(b""), None);
    }

    #[test]
    fn a_malformed_token_file_gets_one_line_naming_the_line() {
        assert_eq!(table("a alice\nb\n").unwrap_err(), "tokens:2: expected \"TOKEN PRINCIPAL\", got 1 fields");
        assert_eq!(table("a alice extra\n").unwrap_err(), "tokens:1: expected \"TOKEN PRINCIPAL\", got 3 fields");
        assert_eq!(table("a alice\na bob\n").unwrap_err(), "tokens:2: this token is already listed on an earlier line");
        assert_eq!(table("tök alice\n").unwrap_err(), "tokens:1: the token has characters other than visible ASCII");
        assert_eq!(table("# nothing\n").unwrap_err(), "tokens: no tokens (expected lines \"TOKEN PRINCIPAL\")");
    }

    #[test]
    fn bearer_values_are_parsed_case_insensitively() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
    }

    #[test]
    fn health_and_reflection_are_open_and_nothing_else_is() {
        assert!(is_open(b"/grpc.health.v1.Health/Check"));
        assert!(is_open(b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!is_open(b"/greet_service.GreetService/SayHello"));
        assert!(!is_open(b"/grpc.health.v1.HealthX/Check"));
    }
}
