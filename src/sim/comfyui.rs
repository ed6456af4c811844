//! GenStudio's hosted ComfyUI task API (`comfy_task_api`), as its documentation and the
//! clients that use it show it: `POST /comfyui/prompt` with `{"workflow_id", "prompt"}`
//! answers `{"code": 0, "msg", "data": {"prompt_id", "prompt_token"}}`; `POST
//! /comfyui/get_task_info` with `{"comfy_task_ids": [...]}` answers a `comfy_task_info`
//! entry per task, `status` 1 (queued) then 2 (running) for `polls` polls, then 3 with
//! `final_files` (`images` of them) or 4 with `errMsg`; `POST /comfyui/cancel` with
//! `{"comfy_task_id"}` makes a task end as 4; `POST /comfyui/upload/image` (multipart)
//! answers the uploaded file's key.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::{Fault, Knobs};

#[derive(Default)]
pub struct Workflows {
    tasks: Mutex<HashMap<String, Run>>,
}

struct Run {
    knobs: Knobs,
    polled: u32,
    cancelled: bool,
}

fn error(code: i64, msg: &str) -> Response {
    axum::Json(json!({"code": code, "msg": msg})).into_response()
}

impl Workflows {
    pub fn prompt(&self, body: &Value, knobs: Knobs) -> Response {
        if !body["workflow_id"].is_string() || !body["prompt"].is_object() {
            return error(10001, "workflow_id and prompt are required");
        }
        let id = format!("{}", uuid::Uuid::now_v7().simple());
        let reply = json!({"code": 0, "msg": "success",
            "data": {"prompt_id": id, "prompt_token": format!("token-{id}")}});
        let run = Run {
            knobs,
            polled: 0,
            cancelled: false,
        };
        self.tasks.lock().insert(id, run);
        axum::Json(reply).into_response()
    }

    pub fn task_info(&self, body: &Value) -> Response {
        let Some(ids) = body["comfy_task_ids"].as_array() else {
            return error(10001, "comfy_task_ids is required");
        };
        let mut tasks = self.tasks.lock();
        let mut infos = Vec::new();
        for id in ids.iter().filter_map(Value::as_str) {
            let Some(run) = tasks.get_mut(id) else {
                return error(10004, "task not found");
            };
            run.polled += 1;
            if run.knobs.fault == Some(Fault::PollError) && run.polled == 1 {
                let busy = json!({"code": 50000, "msg": "service busy"});
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(busy)).into_response();
            }
            let pending =
                run.knobs.polls.unwrap_or(1) + u32::from(run.knobs.fault == Some(Fault::PollError));
            let mut info = json!({"comfy_task_id": id, "queue_size": 0, "current_position": 0,
                "errMsg": "", "files": {}, "final_files": [], "progress_num": 0});
            if run.cancelled || run.knobs.fault == Some(Fault::TaskFailed) {
                info["status"] = json!(4);
                info["errMsg"] = json!(if run.cancelled {
                    "cancelled"
                } else {
                    "node 3 failed"
                });
            } else if run.polled <= pending {
                info["status"] = json!(if run.polled == 1 { 1 } else { 2 });
                info["progress_num"] = json!(50);
            } else {
                let images = run.knobs.images.unwrap_or(1);
                let files: Vec<String> = (0..images)
                    .map(|i| format!("https://sim.invalid/comfy/{id}/{i}.png"))
                    .collect();
                info["status"] = json!(3);
                info["progress_num"] = json!(100);
                info["files"] = json!({"9": files});
                info["final_files"] = json!(files);
            }
            infos.push(info);
        }
        axum::Json(json!({"code": 0, "msg": "success", "data": {"comfy_task_info": infos}}))
            .into_response()
    }

    pub fn cancel(&self, body: &Value) -> Response {
        let id = body["comfy_task_id"]
            .as_str()
            .or(body["prompt_id"].as_str());
        match id.and_then(|id| {
            self.tasks
                .lock()
                .get_mut(id)
                .map(|run| run.cancelled = true)
        }) {
            Some(()) => axum::Json(json!({"code": 0, "msg": "success"})).into_response(),
            None => error(10004, "task not found"),
        }
    }
}

/// An upload: the file's key, as the platform names stored inputs.
pub fn upload(content_type: Option<&str>, body: &[u8]) -> Response {
    if !content_type.is_some_and(|t| t.starts_with("multipart/form-data")) || body.is_empty() {
        return error(10001, "source_file is required");
    }
    axum::Json(json!({"code": 0, "msg": "success",
        "data": {"key": format!("upload/{}.png", uuid::Uuid::now_v7().simple())}}))
    .into_response()
}
