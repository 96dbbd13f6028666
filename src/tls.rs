//! TLS: PEM files in, what the server and the client connector need out
//! (channels themselves are built in `client::channel`).

use std::fmt;
use std::path::Path;

use grpcio::{CertificateRequestType, ServerCredentials, ServerCredentialsBuilder};

fn read_pem(path: &Path, what: &str, marker: &str) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN ") || !text.contains(marker) {
        return Err(format!("{what} {} is not PEM ({marker} block expected)", path.display()));
    }
    Ok(pem)
}

/// The server's identity: a PEM certificate chain and its private key, and
/// optionally the CA that client certificates must be signed by (mutual TLS).
#[derive(Clone)]
pub struct ServerTls {
    pub cert_chain_pem: Vec<u8>,
    pub private_key_pem: Vec<u8>,
    /// When set, every client must present a certificate this CA signed;
    /// the handshake fails otherwise, before any call.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl ServerTls {
    /// Reads the two PEM files; the error is one line naming the bad file.
    pub fn from_files(cert_chain: &Path, private_key: &Path) -> Result<Self, String> {
        Ok(ServerTls {
            cert_chain_pem: read_pem(cert_chain, "TLS certificate", "CERTIFICATE")?,
            private_key_pem: read_pem(private_key, "TLS key", "PRIVATE KEY")?,
            client_ca_pem: None,
        })
    }

    /// Requires client certificates signed by the CA(s) in the PEM file `ca`.
    pub fn require_client_certs(mut self, ca: &Path) -> Result<Self, String> {
        self.client_ca_pem = Some(read_pem(ca, "client CA certificate", "CERTIFICATE")?);
        Ok(self)
    }

    /// Credentials for `Server::add_listening_port`.
    pub fn credentials(&self) -> ServerCredentials {
        let mut builder =
            ServerCredentialsBuilder::new().add_cert(self.cert_chain_pem.clone(), self.private_key_pem.clone());
        if let Some(ca) = &self.client_ca_pem {
            builder =
                builder.root_cert(ca.clone(), CertificateRequestType::RequestAndRequireClientCertificateAndVerify);
        }
        builder.build()
    }
}

impl fmt::Debug for ServerTls {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_chain_pem", &format_args!("{} bytes", self.cert_chain_pem.len()))
            .field("private_key_pem", &"<redacted>")
            .field("client_ca_pem", &self.client_ca_pem.as_ref().map(|ca| format!("{} bytes", ca.len())))
            .finish()
    }
}

/// How a client checks the server: the CA to trust (`None`: the C core's
/// default roots) and, optionally, the name to expect in the server's
/// certificate instead of the host dialled; and the client's own identity,
/// for servers that require client certificates (mutual TLS).
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Option<Vec<u8>>,
    pub server_name: Option<String>,
    /// The client's PEM certificate chain and private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Trusts the CA certificate(s) in the PEM file `ca`.
    pub fn from_file(ca: &Path, server_name: Option<String>) -> Result<Self, String> {
        Ok(ClientTls { ca_pem: Some(read_pem(ca, "CA certificate", "CERTIFICATE")?), server_name, identity: None })
    }

    /// Presents the PEM certificate chain `cert` with its key `key` to the server.
    pub fn with_identity(mut self, cert: &Path, key: &Path) -> Result<Self, String> {
        let cert = read_pem(cert, "client certificate", "CERTIFICATE")?;
        let key = read_pem(key, "client key", "PRIVATE KEY")?;
        self.identity = Some((cert, key));
        Ok(self)
    }
}

impl fmt::Debug for ClientTls {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|ca| format!("{} bytes", ca.len())))
            .field("server_name", &self.server_name)
            .field(
                "identity",
                &self.identity.as_ref().map(|(cert, _)| format!("{} bytes + <redacted key>", cert.len())),
            )
            .finish()
    }
}
