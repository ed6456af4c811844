//! Zhipu's asynchronous tasks and CogView images, as its API documentation and the
//! `zhipuai` SDK show them: `POST /zhipu/async/chat/completions` answers a task id with
//! `task_status: "PROCESSING"`; `GET /zhipu/async-result/{id}` answers `PROCESSING` for
//! `polls` polls, then `SUCCESS` with `choices` and `usage` (without it if the `usage`
//! knob is false; or `FAILED`), and the same
//! result on every later poll; `POST /zhipu/images/generations` answers
//! `{"created", "data": [{"url"}, ...]}`, one entry per image.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::formats::Answer;
use super::{Fault, Knobs};

/// The tasks submitted so far.
#[derive(Default)]
pub struct Tasks {
    tasks: Mutex<HashMap<String, Task>>,
}

struct Task {
    model: Value,
    answer: Answer,
    knobs: Knobs,
    polled: u32,
}

impl Tasks {
    pub fn submit(&self, body: &Value, knobs: Knobs) -> Response {
        let id = format!("{}-sim", uuid::Uuid::now_v7().simple());
        let model = body["model"].clone();
        let reply = json!({"request_id": format!("req-{id}"), "id": id, "model": model,
            "task_status": "PROCESSING"});
        let task = Task {
            model,
            answer: Answer::new(body, &knobs),
            knobs,
            polled: 0,
        };
        self.tasks.lock().insert(id, task);
        axum::Json(reply).into_response()
    }

    pub fn poll(&self, id: &str) -> Response {
        let mut tasks = self.tasks.lock();
        let Some(task) = tasks.get_mut(id) else {
            let error = json!({"error": {"code": "1214", "message": "任务不存在"}});
            return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
        };
        task.polled += 1;
        if task.knobs.fault == Some(Fault::PollError) && task.polled == 1 {
            let error = json!({"error": {"code": "500", "message": "系统繁忙，请稍后再试"}});
            return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(error)).into_response();
        }
        let pending =
            task.knobs.polls.unwrap_or(1) + u32::from(task.knobs.fault == Some(Fault::PollError));
        let mut reply = json!({"id": id, "request_id": format!("req-{id}"), "model": task.model});
        if task.polled <= pending {
            reply["task_status"] = json!("PROCESSING");
        } else if task.knobs.fault == Some(Fault::TaskFailed) {
            reply["task_status"] = json!("FAILED");
        } else {
            let answer = &task.answer;
            reply["task_status"] = json!("SUCCESS");
            reply["choices"] = json!([{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": answer.pieces.concat()}}]);
            if task.knobs.usage != Some(false) {
                reply["usage"] = json!({"prompt_tokens": answer.prompt,
                    "completion_tokens": answer.completion,
                    "total_tokens": answer.prompt + answer.completion});
            }
        }
        axum::Json(reply).into_response()
    }
}

/// CogView: one URL per image.
pub fn images(body: &Value, knobs: &Knobs) -> Response {
    let n = knobs.images.or_else(|| body["n"].as_u64()).unwrap_or(1);
    let data: Vec<Value> = (0..n)
        .map(|i| json!({"url": format!("https://sim.invalid/cogview/{i}.png")}))
        .collect();
    axum::Json(json!({"created": chrono::Utc::now().timestamp(), "data": data})).into_response()
}
