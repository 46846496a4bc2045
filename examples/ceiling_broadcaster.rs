//! The physical ceiling for `phx-load fanout` on this machine: the least a WebSocket server
//! can do to pass the fan-out scenario, with none of phx-gateway's work (no channel actors,
//! no limits, no metrics, no presence, no actix). Measured with the same load tool, it shows
//! how much of a fan-out figure is the kernel, the WebSocket framing and the load tool itself.
//!
//! It understands just enough Phoenix V2 for the load tool: `phx_join` and `heartbeat` get an
//! ok reply, `ping` an ok reply echoing its payload, `new_msg` is encoded once and queued to every subscriber of the topic (the
//! sender included). One tokio task per connection reads; one writes.
//!
//! ```sh
//! cargo run --release --example ceiling_broadcaster -- 127.0.0.1:4801 &
//! ./target/release/phx-load fanout --addrs 127.0.0.1:4801 -n 5000 --rate 10 --duration 3 \
//!     --sources 4 --step --step-factor 1.5
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Topics = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Message>>>>>;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4801".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("ceiling broadcaster on ws://{addr}/socket/websocket");
        let topics = Topics::default();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, topics.clone()));
        }
    })
}

async fn connection(stream: TcpStream, topics: Topics) {
    // tungstenite zeroes `read_buffer_size` bytes before each read (128 KiB by default).
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            // Queue everything already waiting, then flush once.
            let mut more = Some(msg);
            while let Some(m) = more {
                if sink.feed(m).await.is_err() {
                    return;
                }
                more = rx.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = source.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(Value::Array(f)) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if f.len() != 5 {
            continue;
        }
        let (topic, event) = (f[2].as_str().unwrap_or(""), f[3].as_str().unwrap_or(""));
        match event {
            "phx_join" | "heartbeat" | "ping" => {
                if event == "phx_join" {
                    let mut t = topics.lock().unwrap_or_else(|e| e.into_inner());
                    t.entry(topic.to_owned()).or_default().push(tx.clone());
                }
                let response = if event == "ping" {
                    f[4].clone()
                } else {
                    serde_json::json!({})
                };
                let reply = Value::Array(vec![
                    f[0].clone(),
                    f[1].clone(),
                    f[2].clone(),
                    "phx_reply".into(),
                    serde_json::json!({"status": "ok", "response": response}),
                ]);
                let _ = tx.send(Message::text(reply.to_string()));
            }
            _ => {
                let frame = Value::Array(vec![
                    Value::Null,
                    Value::Null,
                    f[2].clone(),
                    f[3].clone(),
                    f[4].clone(),
                ]);
                // Encoded once; every subscriber's message shares the same bytes.
                let shared = Utf8Bytes::from(frame.to_string());
                let t = topics.lock().unwrap_or_else(|e| e.into_inner());
                for sub in t.get(topic).into_iter().flatten() {
                    let _ = sub.send(Message::Text(shared.clone()));
                }
            }
        }
    }
    writer.abort();
}
