//! The HTTP server: WebSocket endpoint and the demo page.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse, HttpServer};

use crate::gateway::Gateway;
use crate::transport::websocket;

/// A started server.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Stops the HTTP server.
    pub handle: ServerHandle,
    /// The server future; await it (or spawn it) to run the server.
    pub server: Server,
}

/// Binds the listener from the settings.
pub fn bind(gateway: &Gateway) -> std::io::Result<TcpListener> {
    let http = &gateway.settings.http;
    TcpListener::bind((http.host.as_str(), http.port))
}

/// Builds the HTTP server on `listener`. Signals are not handled here: the caller owns
/// shutdown (see `main.rs`).
pub fn start(gateway: Arc<Gateway>, listener: TcpListener) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let workers = match gateway.settings.http.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let data = web::Data::new(gateway.clone());
    // The transports get only what they need.
    let transport = web::Data::new(gateway.transport().clone());
    let ws_path = format!("{}/websocket", gateway.settings.socket.path);
    let demo = gateway.settings.demo.enabled;
    let longpoll = gateway.settings.longpoll.enabled;
    let lp_path = format!("{}/longpoll", gateway.settings.socket.path);
    // Long-poll POSTs carry client messages: the same size limit as WebSocket messages.
    let body_limit = web::PayloadConfig::new(gateway.settings.socket.max_frame_bytes);
    let server = HttpServer::new(move || {
        let mut app = App::new()
            .configure(crate::api::configure)
            .app_data(data.clone())
            .app_data(transport.clone())
            .app_data(body_limit.clone())
            .route(&ws_path, web::get().to(websocket::upgrade));
        if longpoll {
            app = app
                .route(&lp_path, web::get().to(crate::transport::longpoll::get))
                .route(&lp_path, web::post().to(crate::transport::longpoll::post))
                .route(
                    &lp_path,
                    web::method(actix_web::http::Method::OPTIONS)
                        .to(crate::transport::longpoll::options),
                );
        }
        if demo {
            app = app
                .route("/", web::get().to(demo_index))
                .route("/demo/{file}", web::get().to(demo_file))
                .route("/assets/phoenix.mjs", web::get().to(phoenix_js));
        }
        app
    })
    .workers(workers)
    // Realtime frames are small: never let Nagle's algorithm hold them back.
    .tcp_nodelay(true)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    Ok(Running {
        addr,
        handle: server.handle(),
        server,
    })
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

async fn send_file(path: &Path, ctype: &'static str) -> HttpResponse {
    match tokio::fs::read(path).await {
        Ok(body) => HttpResponse::Ok()
            .content_type(ctype)
            .insert_header(("cache-control", "no-cache"))
            .body(body),
        Err(_) => HttpResponse::NotFound()
            .content_type(ContentType::plaintext())
            .body(format!("{} not found\n", path.display())),
    }
}

async fn demo_index(gateway: web::Data<Arc<Gateway>>) -> HttpResponse {
    send_file(
        &gateway.settings.demo.dir.join("index.html"),
        "text/html; charset=utf-8",
    )
    .await
}

async fn demo_file(gateway: web::Data<Arc<Gateway>>, file: web::Path<String>) -> HttpResponse {
    let name = file.into_inner();
    let safe = !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !safe {
        return HttpResponse::NotFound().finish();
    }
    send_file(&gateway.settings.demo.dir.join(&name), content_type(&name)).await
}

async fn phoenix_js(gateway: web::Data<Arc<Gateway>>) -> HttpResponse {
    let path = &gateway.settings.demo.phoenix_js;
    if !path.exists() {
        return HttpResponse::NotFound()
            .content_type(ContentType::plaintext())
            .body("the phoenix npm client is not installed: run `npm ci` (or `make run`) in the repository root\n");
    }
    send_file(path, "text/javascript; charset=utf-8").await
}
