//! The two ways a test runs the server: in this process ([`TestServer`]) or as a child
//! process ([`Process`]). Both listen on `127.0.0.1:0` and dereference to a [`Client`].

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tally_server::{App, AppError, Config};
use tokio::sync::{mpsc as tokio_mpsc, oneshot};

use crate::Client;

/// A reload request and where its answer goes.
type Reload = oneshot::Sender<Result<bool, String>>;

/// `tally_server::App` serving on its own thread, as `tally serve` runs it, until stopped.
/// Stops (draining, closing the log) on drop.
#[derive(Debug)]
pub struct TestServer {
    client: Client,
    pub dir: PathBuf,
    pub config: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    reload: tokio_mpsc::Sender<Reload>,
    thread: Option<std::thread::JoinHandle<Result<(), AppError>>>,
}

impl TestServer {
    /// Starts the server of the config file `config` on `127.0.0.1:0` (both listeners) with
    /// its data in `data` and two runtime threads, as the process tests' `--listen
    /// 127.0.0.1:0 --admin-listen 127.0.0.1:0 --worker-threads 2` did. The test process's
    /// `TALLY_*` variables are not applied.
    pub fn start(config: &Path, data: &Path) -> TestServer {
        TestServer::try_start(config, data).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// Like [`TestServer::start`], returning why the server refused to start.
    pub fn try_start(config: &Path, data: &Path) -> Result<TestServer, AppError> {
        let text = std::fs::read_to_string(config).unwrap();
        let mut c = Config::from_toml(&text, config.parent().unwrap_or(Path::new(".")))?;
        // As the binary does: the process's subscriber, whose filter the admin API changes.
        // The first server of the test process sets it; it is global, like the process's.
        tally_server::telemetry::init_tracing(&c.logging);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        c.edge.listen = any;
        c.edge.admin.listen = Some(any);
        c.edge.worker_threads = 2;
        c.set_data_dir(data.to_owned());
        let app = App::open(c)?;
        let listeners = app.bind()?;
        let client = Client { addr: listeners.public_addr().unwrap(), admin: listeners.admin_addr().unwrap().unwrap() };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (reload_tx, mut reload_rx) = tokio_mpsc::channel::<Reload>(4);
        let thread = std::thread::Builder::new()
            .name("tally-test-server".into())
            .spawn(move || {
                app.run(listeners, move |edge| {
                    Ok(async move {
                        tokio::pin!(stop_rx);
                        loop {
                            tokio::select! {
                                _ = &mut stop_rx => break,
                                Some(reply) = reload_rx.recv() => {
                                    let _ = reply.send(edge.reload().await.map_err(|e| e.to_string()));
                                }
                            }
                        }
                    })
                })
            })
            .unwrap();
        Ok(TestServer {
            client,
            dir: data.to_owned(),
            config: config.to_owned(),
            stop: Some(stop_tx),
            reload: reload_tx,
            thread: Some(thread),
        })
    }

    /// Re-reads the program file and link overlay, as SIGHUP does: whether the program
    /// changed, or why the new one was refused.
    pub fn reload(&self) -> Result<bool, String> {
        let (tx, rx) = oneshot::channel();
        self.reload.blocking_send(tx).map_err(|_| "server stopped".to_owned())?;
        rx.blocking_recv().map_err(|_| "server stopped".to_owned())?
    }

    /// Stops as SIGTERM does (drain, stop the worker, close the log); whether the server
    /// returned without an error.
    pub fn stop(&mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(t) => matches!(t.join(), Ok(Ok(()))),
            None => false,
        }
    }
}

impl Deref for TestServer {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tally serve` as a child process, for tests that kill it. Killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    client: Client,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Process {
    /// Starts `bin serve --config config` on `127.0.0.1:0` with `vars` in its environment.
    pub fn start(bin: &str, config: &Path, data: &Path, vars: &[(&str, &str)]) -> Process {
        Process::start_with_stderr(bin, config, data, vars, Stdio::inherit())
    }

    /// Like [`Process::start`], with the server's standard error (its log) going to `stderr`.
    pub fn start_with_stderr(bin: &str, config: &Path, data: &Path, vars: &[(&str, &str)], stderr: Stdio) -> Process {
        let mut child = Command::new(bin)
            .envs(vars.iter().copied())
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--worker-threads", "2"])
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("tally listening on ") {
                    let _ = tx.send((false, addr.parse::<SocketAddr>().unwrap()));
                } else if let Some(addr) = line.strip_prefix("tally admin listening on ") {
                    let _ = tx.send((true, addr.parse::<SocketAddr>().unwrap()));
                }
            }
        });
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            match rx.recv_timeout(Duration::from_secs(60)).expect("server did not start within 60 s") {
                (false, a) => addr = Some(a),
                (true, a) => admin = Some(a),
            }
        }
        Process {
            child: Some(child),
            client: Client { addr: addr.unwrap(), admin: admin.unwrap() },
            dir: data.to_owned(),
            config: config.to_owned(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` (`HUP`, `TERM`, …) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                c.kill().unwrap();
                c.wait().unwrap();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Deref for Process {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
