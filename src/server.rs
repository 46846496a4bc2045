//! The HTTP server: the WebSocket endpoint, and an actix-web App for everything else (long-poll,
//! API, demo page).
//!
//! It is assembled from actix-web's parts rather than with `HttpServer`, because only
//! actix-http's service builder takes an upgrade hook: WebSocket requests are handed with their
//! connection to [`websocket::take_over`] and leave the HTTP/1 dispatcher (and its two 8 KiB
//! buffers) for the rest of their life. The settings are `HttpServer`'s defaults.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive};
use actix_service::{fn_service, map_config};
use actix_web::dev::{AppConfig, Server, ServerHandle};
use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse};

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
    let endpoint = Arc::new(websocket::Endpoint {
        env: gateway.transport().clone(),
        path: ws_path.clone(),
        // Connections run on the caller's runtime when it is a work-stealing one (see
        // `websocket::take_over`).
        runtime: tokio::runtime::Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
    });
    let demo = gateway.settings.demo.enabled;
    let longpoll = gateway.settings.longpoll.enabled;
    let lp_path = format!("{}/longpoll", gateway.settings.socket.path);
    // Long-poll POSTs carry client messages: the same size limit as WebSocket messages.
    let body_limit = web::PayloadConfig::new(gateway.settings.socket.max_frame_bytes);
    let app = move || {
        let mut app = App::new()
            .configure(crate::api::configure)
            .app_data(data.clone())
            .app_data(transport.clone())
            .app_data(body_limit.clone())
            // Upgrades never get here (see `take_over`): a plain GET is not a handshake.
            .route(&ws_path, web::get().to(not_an_upgrade));
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
    };
    let server = actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(5)
        .listen("phx-gateway", listener, move || {
            // Called on each worker's thread: that thread's allocator cache is released
            // while the worker lives (its runtime drops the task when it stops).
            actix_web::rt::spawn(crate::shrink::release_thread_cache_every(
                crate::shrink::THREAD_CACHE_RELEASE_EVERY,
            ));
            let endpoint = endpoint.clone();
            HttpService::build()
                .keep_alive(KeepAlive::default())
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                // Realtime frames are small: never let Nagle's algorithm hold them back.
                .tcp_nodelay(true)
                .local_addr(addr)
                .upgrade(fn_service(move |(req, framed)| {
                    websocket::take_over(endpoint.clone(), req, framed)
                }))
                .finish(map_config(app(), |_| AppConfig::default()))
                .tcp()
        })?
        .run();
    Ok(Running {
        addr,
        handle: server.handle(),
        server,
    })
}

async fn not_an_upgrade() -> HttpResponse {
    HttpResponse::BadRequest().finish()
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
