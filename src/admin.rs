//! The admin listener: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (accepting
//! traffic), on its own port so that it is never exposed with the public one.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};

use crate::gateway::Gateway;

/// Binds the admin listener from the settings; None when `admin.port` is 0.
pub fn bind(gateway: &Gateway) -> std::io::Result<Option<TcpListener>> {
    let admin = &gateway.settings.admin;
    if admin.port == 0 {
        return Ok(None);
    }
    TcpListener::bind((admin.host.as_str(), admin.port)).map(Some)
}

/// Builds the admin server on `listener` (one worker; it never handles client traffic).
pub fn start(gateway: Arc<Gateway>, listener: TcpListener) -> std::io::Result<Server> {
    crate::metrics::init();
    let data = web::Data::new(gateway);
    Ok(HttpServer::new(move || {
        // Called on the worker's thread: rendering /metrics leaves its allocator cache full.
        actix_web::rt::spawn(crate::shrink::release_thread_cache_every(
            crate::shrink::THREAD_CACHE_RELEASE_EVERY,
        ));
        App::new()
            .app_data(data.clone())
            .route("/metrics", web::get().to(metrics))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

async fn metrics(gateway: web::Data<Arc<Gateway>>) -> HttpResponse {
    ::metrics::gauge!(crate::metrics::CHANNEL_TASKS).set(gateway.channel_tasks() as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(gateway: web::Data<Arc<Gateway>>) -> HttpResponse {
    if gateway.ready() {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    } else if gateway.is_draining() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining\n")
    } else {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("redis unreachable\n")
    }
}
