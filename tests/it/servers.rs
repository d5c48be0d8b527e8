//! Private NATS and Postgres servers on random ports, for tests that restart them. The shared
//! services on the standard ports are never touched.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_port(port: u16, up: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let open = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
        if open == up {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "port {port} did not come {}", if up { "up" } else { "down" });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Debian's nats-server with JetStream and a file store that survives restarts.
pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        let mut server = NatsServer { port: free_port(), dir: tempfile::tempdir().unwrap(), child: None };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let store = self.dir.path().join("js");
        let child = Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd", store.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server)");
        self.child = Some(child);
        wait_port(self.port, true).await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGKILL), waits `down`, starts it again on the same port and store.
    pub async fn restart(&mut self, down: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false).await;
        tokio::time::sleep(down).await;
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A throwaway Postgres cluster (initdb + pg_ctl as the `postgres` user), trust auth.
pub struct PgServer {
    pub port: u16,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn pg_bin(name: &str) -> String {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL server binaries installed");
    let mut dirs: Vec<PathBuf> = versions.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    dirs.last().expect("a PostgreSQL version").join("bin").join(name).display().to_string()
}

fn as_postgres(args: &[&str]) {
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runuser");
    assert!(status.success(), "{args:?} failed");
}

impl PgServer {
    pub async fn start() -> PgServer {
        let dir = tempfile::Builder::new().prefix("orgprov-pg").tempdir_in("/tmp").unwrap();
        let data = dir.path().join("data");
        Command::new("chown").args(["-R", "postgres:postgres", dir.path().to_str().unwrap()]).status().unwrap();
        as_postgres(&[&pg_bin("initdb"), "-D", data.to_str().unwrap(), "--auth=trust", "-U", "postgres"]);
        let server = PgServer { port: free_port(), data, _dir: dir };
        server.spawn().await;
        server
    }

    async fn spawn(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.data.display());
        let log = self.data.join("server.log");
        as_postgres(&[
            &pg_bin("pg_ctl"),
            "-D",
            self.data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
        wait_port(self.port, true).await;
    }

    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the server (immediate mode: connections are cut), waits `down`, starts it again.
    pub async fn restart(&self, down: Duration) {
        as_postgres(&[&pg_bin("pg_ctl"), "-D", self.data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
        wait_port(self.port, false).await;
        tokio::time::sleep(down).await;
        self.spawn().await;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &pg_bin("pg_ctl"),
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
