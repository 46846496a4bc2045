//! The one mock webhook backend: a real HTTP server that decides joins by topic and handles
//! events by name, can be made to hang, and records the Authorization header of each call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use phx_gateway::config::{JoinPolicy, RouteSettings};
use serde_json::{json, Value};

/// What the handlers share with the test.
#[derive(Default)]
struct State {
    /// While set, every call waits (up to a minute) before it is answered.
    hang: AtomicBool,
    /// The Authorization header of each call, in order.
    authorization: Mutex<Vec<Option<String>>>,
}

/// A running backend on a loopback port. Joins (`POST /join`), by topic:
///
/// - `game:no` is refused with reason `banned`;
/// - `game:slow` is allowed after 3 s;
/// - `game:broken` gets an HTTP 500;
/// - any other topic is allowed with a reply (`welcome`: the user, `params`: the join
///   params), the assign `role: captain` and the presence meta `team: red`.
///
/// Events (`POST /event`), by name: `score` replies with the payload and the `role` assign
/// and broadcasts `scored`; `quiet` answers `{}`; `refuse` replies with an error; `move`
/// replies `{"handled": "move"}`; any other event gets an HTTP 502.
pub(crate) struct Backend {
    pub port: u16,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
}

impl Backend {
    pub(crate) fn start() -> Self {
        let state = Arc::new(State::default());
        let data = web::Data::from(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/join", web::post().to(join))
                .route("/event", web::post().to(event))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        super::server::run_in_background(server);
        Self {
            port,
            state,
            handle,
        }
    }

    /// A route for `topic` whose joins and events go to this backend.
    pub(crate) fn route(&self, topic: &str) -> RouteSettings {
        webhook_route(topic, self.port)
    }

    /// Makes every call wait (`true`) until released (`false`).
    pub(crate) fn hang(&self, hang: bool) {
        self.state.hang.store(hang, Ordering::SeqCst);
    }

    /// Takes the Authorization header of the latest call not taken yet (None: no such call).
    pub(crate) fn pop_authorization(&self) -> Option<Option<String>> {
        self.state.authorization.lock().expect("lock").pop()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        super::server::stop_in_background(self.handle.clone());
    }
}

/// A route for `topic` whose joins and events go to a backend on loopback port `port`.
pub(crate) fn webhook_route(topic: &str, port: u16) -> RouteSettings {
    let mut r = phx_gateway::config::default_routes().remove(2);
    r.topic = topic.into();
    r.join = JoinPolicy::Webhook;
    r.join_webhook = Some(format!("http://127.0.0.1:{port}/join"));
    r.event_webhook = Some(format!("http://127.0.0.1:{port}/event"));
    r.history_size = 0; // Phoenix-exact frames
    r
}

/// Records the call and waits while the backend hangs.
async fn called(state: &State, req: &HttpRequest) {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .authorization
        .lock()
        .expect("lock")
        .push(authorization);
    let started = Instant::now();
    while state.hang.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn join(state: web::Data<State>, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    called(&state, &req).await;
    match body["topic"].as_str() {
        Some("game:no") => HttpResponse::Ok().json(json!({"allow": false, "reason": "banned"})),
        Some("game:slow") => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            HttpResponse::Ok().json(json!({"allow": true}))
        }
        Some("game:broken") => HttpResponse::InternalServerError().finish(),
        _ => HttpResponse::Ok().json(json!({
            "allow": true,
            "reply": {"welcome": body["user_id"], "params": body["params"]},
            "assigns": {"role": "captain"},
            "presence_meta": {"team": "red"}
        })),
    }
}

async fn event(state: web::Data<State>, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    called(&state, &req).await;
    match body["event"].as_str() {
        Some("score") => HttpResponse::Ok().json(json!({
            "reply": {"status": "ok", "response": {"accepted": body["payload"], "role": body["assigns"]["role"]}},
            "broadcast": {"event": "scored", "payload": {"by": body["user_id"], "points": body["payload"]["points"]}}
        })),
        Some("quiet") => HttpResponse::Ok().json(json!({})),
        Some("refuse") => HttpResponse::Ok().json(
            json!({"reply": {"status": "error", "response": {"reason": "not your turn"}}}),
        ),
        Some("move") => HttpResponse::Ok()
            .json(json!({"reply": {"status": "ok", "response": {"handled": "move"}}})),
        _ => HttpResponse::BadGateway().finish(),
    }
}
