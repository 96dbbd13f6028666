//! A throwaway CA and a server and a client certificate it signed, made
//! with the `openssl` CLI at test time.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use greet::server::{self, RunningServer, ServerConfig};
use greet::tls::{ClientTls, ServerTls};

/// The name in the server certificate (besides localhost and 127.0.0.1).
pub const SERVER_NAME: &str = "greet.test";

/// `openssl req` arguments for a new P-256 key, unencrypted.
const EC_KEY: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// A temp dir holding a CA and a server and a client certificate it signed;
/// removed on drop.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// A CA, a server certificate (`server.pem`, `server.key`) and a client
    /// certificate (`client.pem`, `client.key`), both signed by the CA.
    pub fn new() -> Certs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "greet-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let certs = Certs { dir };
        certs.openssl(
            &[
                &["req", "-x509"][..],
                &EC_KEY,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=greet test CA"],
            ]
            .concat(),
        );
        certs.sign(
            "server",
            "/CN=localhost",
            &format!("subjectAltName=DNS:localhost,DNS:{SERVER_NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        );
        certs.sign("client", "/CN=greet test client", "extendedKeyUsage=clientAuth\n");
        certs
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output().expect("the openssl CLI runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `<name>.key` and `<name>.pem`: a new key and its certificate for
    /// `subject`, signed by the CA, with the extensions in `extensions`.
    fn sign(&self, name: &str, subject: &str, extensions: &str) {
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.cnf"));
        self.openssl(&[&["req"][..], &EC_KEY, &["-keyout", &key, "-out", &csr, "-subj", subject]].concat());
        std::fs::write(self.path(&ext), extensions).unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn client_tls(&self, server_name: Option<&str>) -> ClientTls {
        ClientTls::from_file(&self.path("ca.pem"), server_name.map(str::to_string)).unwrap()
    }

    /// Trusts this CA and presents this directory's client certificate.
    pub fn client_tls_with_identity(&self) -> ClientTls {
        self.client_tls(None).with_identity(&self.path("client.pem"), &self.path("client.key")).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server (with the interop service) on 127.0.0.1:0 using `certs`.
pub fn start_tls_server(certs: &Certs) -> RunningServer {
    start_server_with(ServerTls::from_files(&certs.path("server.pem"), &certs.path("server.key")).unwrap())
}

/// The same, requiring client certificates signed by `certs`' CA (mutual TLS).
pub fn start_mtls_server(certs: &Certs) -> RunningServer {
    let tls = ServerTls::from_files(&certs.path("server.pem"), &certs.path("server.key")).unwrap();
    start_server_with(tls.require_client_certs(&certs.path("ca.pem")).unwrap())
}

fn start_server_with(tls: ServerTls) -> RunningServer {
    server::start(&ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        completion_queues: 2,
        stream_interval: std::time::Duration::ZERO,
        tls: Some(tls),
        interop: true,
        ..Default::default()
    })
    .expect("a TLS server starts on a free loopback port")
}
