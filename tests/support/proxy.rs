//! A TCP proxy that a test can cut, to play a network outage between the service and a
//! peer (the Cosmos-protocol server): while down, open connections are closed and new ones
//! refused; back up, it forwards again.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub endpoint: String,
    target: Arc<Mutex<Option<SocketAddr>>>,
    up: watch::Sender<bool>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Listens on a free loopback port; forwards once [`Proxy::forward_to`] names the target.
    pub fn start() -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}/", listener.local_addr().unwrap());
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (up, watch_up) = watch::channel(true);
        let shared = target.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let Some(to) = *shared.lock().unwrap() else { continue };
                let mut watch_up = watch_up.clone();
                if !*watch_up.borrow() {
                    drop(client); // refused while down
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else { return };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch_up.wait_for(|up| !*up) => {} // cut: both ends close
                    }
                });
            }
        });
        Self { endpoint, target, up, _runtime: runtime }
    }

    /// Where to forward: `http://host:port/`.
    pub fn forward_to(&self, endpoint: &str) {
        let addr = endpoint.trim_start_matches("http://").trim_end_matches('/').parse().unwrap();
        *self.target.lock().unwrap() = Some(addr);
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}
