//! A throwaway CA and a server certificate it signed, made with the
//! `openssl` CLI at test time.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use greet::server::{self, RunningServer, ServerConfig};
use greet::tls::{ClientTls, ServerTls};

/// The name in the server certificate (besides localhost and 127.0.0.1).
pub const SERVER_NAME: &str = "greet.test";

/// A temp dir holding a CA and a server certificate it signed; removed on drop.
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub fn new() -> Certs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "greet-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("the openssl CLI runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=greet test CA"],
            ]
            .concat(),
        );
        openssl(
            &[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat(),
        );
        std::fs::write(
            dir.join("ext.cnf"),
            format!("subjectAltName=DNS:localhost,DNS:{SERVER_NAME},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ]);
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn client_tls(&self, server_name: Option<&str>) -> ClientTls {
        ClientTls::from_file(&self.path("ca.pem"), server_name.map(str::to_string)).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server (with the interop service) on 127.0.0.1:0 using `certs`.
pub fn start_tls_server(certs: &Certs) -> RunningServer {
    let tls = ServerTls::from_files(&certs.path("server.pem"), &certs.path("server.key")).unwrap();
    server::start(&ServerConfig {
        addr: "127.0.0.1:0".to_string(),
        completion_queues: 2,
        tls: Some(tls),
        interop: true,
        ..Default::default()
    })
    .expect("a TLS server starts on a free loopback port")
}
