//! GenStudio's Stable Diffusion task API (`sd_task_api`). The request is the one its
//! tutorial documents; the answers are tollgate's reading of the platform's envelope
//! (tests/fixtures/README.md says what is documented and what is inferred): `POST
//! /sd/create` answers `{"code": 0, "msg", "data": {"task_id"}}`; `POST /sd/get_result`
//! with `{"task_id"}` answers `data.status` 1 (queued) then 2 (running) for `polls`
//! polls, then 3 with `images` (`batch_size` × `n_iter` of them, or the `images` knob) or
//! 4 with `error`.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{Fault, Knobs};

#[derive(Default)]
pub struct Images {
    tasks: Mutex<HashMap<String, Job>>,
}

struct Job {
    knobs: Knobs,
    images: u64,
    polled: u32,
}

fn error(code: i64, msg: &str) -> Response {
    axum::Json(json!({"code": code, "msg": msg})).into_response()
}

impl Images {
    pub fn create(&self, body: &Value, knobs: Knobs) -> Response {
        if !body["prompt"].is_string() {
            return error(10001, "prompt is required");
        }
        if !body["override_settings"]["sd_model_checkpoint"].is_string() {
            return error(10001, "override_settings.sd_model_checkpoint is required");
        }
        let count = |name: &str| body[name].as_u64().unwrap_or(1).max(1);
        let images = knobs
            .images
            .unwrap_or_else(|| count("batch_size") * count("n_iter"));
        let id = (knobs.task_id.clone())
            .unwrap_or_else(|| format!("sd{}", uuid::Uuid::now_v7().simple()));
        let job = Job {
            knobs,
            images,
            polled: 0,
        };
        self.tasks.lock().insert(id.clone(), job);
        axum::Json(json!({"code": 0, "msg": "success", "data": {"task_id": id}})).into_response()
    }

    pub fn result(&self, body: &Value) -> Response {
        let Some(id) = body["task_id"].as_str() else {
            return error(10001, "task_id is required");
        };
        let mut tasks = self.tasks.lock();
        let Some(job) = tasks.get_mut(id) else {
            return error(10004, "task not found");
        };
        job.polled += 1;
        if job.knobs.fault == Some(Fault::PollError) && job.polled == 1 {
            let busy = json!({"code": 50000, "msg": "service busy"});
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(busy)).into_response();
        }
        let pending =
            job.knobs.polls.unwrap_or(1) + u32::from(job.knobs.fault == Some(Fault::PollError));
        let mut data = json!({"task_id": id, "images": [], "error": ""});
        if job.knobs.fault == Some(Fault::TaskFailed) {
            data["status"] = json!(4);
            data["error"] = json!("out of memory");
        } else if job.polled <= pending {
            data["status"] = json!(if job.polled == 1 { 1 } else { 2 });
        } else {
            let images: Vec<String> = (0..job.images)
                .map(|i| format!("https://sim.invalid/sd/{id}/{i}.png"))
                .collect();
            data["status"] = json!(3);
            data["images"] = json!(images);
        }
        axum::Json(json!({"code": 0, "msg": "success", "data": data})).into_response()
    }
}
