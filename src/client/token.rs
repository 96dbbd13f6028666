//! The client's bearer token: read from a token file, sent as
//! `authorization: Bearer <token>` metadata on every call.

use std::path::Path;

use grpcio::{Metadata, MetadataBuilder};

use crate::wire::AUTHORIZATION;

/// A token as it can travel in an HTTP/2 header value: visible ASCII.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic())
}

/// The first token in a client's token file (surrounding whitespace
/// ignored); the error is one line naming the file.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if !is_token(token) {
        return Err(format!("token file {} must hold one token of visible ASCII characters", path.display()));
    }
    Ok(token.to_string())
}

/// Call metadata carrying `token` as `authorization: Bearer <token>`.
pub fn bearer_metadata(token: &str) -> Result<Metadata, String> {
    let mut builder = MetadataBuilder::with_capacity(1);
    builder
        .add_str(AUTHORIZATION, &format!("Bearer {token}"))
        .map_err(|e| format!("the token cannot be sent as metadata: {e}"))?;
    Ok(builder.build())
}
