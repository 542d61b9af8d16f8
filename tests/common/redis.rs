//! A real `redis-server` (the system's: Debian's `redis-server` package) on
//! a free loopback port, killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// Its data directory (kept across a restart with `restart`).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    persistent: bool,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    /// An in-memory Redis: restarted, it has lost everything.
    pub fn start() -> Redis {
        Redis::launch(free_port(), None, false)
    }

    /// An in-memory Redis on `port`.
    pub fn start_on(port: u16) -> Redis {
        Redis::launch(port, None, false)
    }

    /// A Redis that writes every command to its append-only file: restarted,
    /// it has everything.
    pub fn start_persistent() -> Redis {
        Redis::launch(free_port(), None, true)
    }

    fn launch(port: u16, dir: Option<PathBuf>, persistent: bool) -> Redis {
        let tmp = dir.is_none().then(|| tempfile::tempdir().unwrap());
        let dir = dir.unwrap_or_else(|| tmp.as_ref().unwrap().path().to_owned());
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .args(["--maxmemory-policy", "noeviction"]);
        if persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is needed for the fleet tests (Debian: apt-get install redis-server)",
            );
        let redis = Redis {
            child: Some(child),
            port,
            dir,
            _tmp: tmp,
            persistent,
        };
        redis.wait_ready();
        redis
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn try_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` with `args`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY (test): kill(2) on our own child.
        unsafe { libc::kill(pid, sig) };
    }

    /// Stops it (as a crash: SIGKILL) and starts it again on the same port,
    /// with its data when it is persistent, empty otherwise.
    pub fn restart(&mut self) {
        self.kill();
        let mut fresh = Redis::launch(self.port, Some(self.dir.clone()), self.persistent);
        self.child = fresh.child.take();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
