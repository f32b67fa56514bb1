# The status-check timers: one HTTP task per timer to on-timer, with an OIDC token.
resource "google_cloud_tasks_queue" "status_checks" {
  name     = local.queue_id
  location = var.region

  rate_limits {
    max_dispatches_per_second = 100
    max_concurrent_dispatches = 100
  }

  # The handler answers 5xx only for transient trouble (a lost race, a still-starting
  # invocation, Buildbucket or the store down): retry soon, then back off up to the default
  # status_check_max, and never give up, as LUCI's timer queue (shepherd/queue_policy.py).
  retry_config {
    max_attempts  = var.status_checks_max_attempts
    min_backoff   = "0.1s"
    max_backoff   = "600s"
    max_doublings = 13
  }

  stackdriver_logging_config {
    sampling_ratio = 0.1
  }

  depends_on = [google_project_service.apis]
}

# Who enqueues: trigger and scheduler (the start of an invocation), on-timer (each next check).
resource "google_cloud_tasks_queue_iam_member" "enqueuers" {
  for_each = toset(["trigger", "timer", "scheduler"])
  name     = google_cloud_tasks_queue.status_checks.id
  location = var.region
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.fn[each.key].email}"
}

# Creating a task whose OIDC token is the invoker's identity needs actAs on that account.
resource "google_service_account_iam_member" "enqueuers_act_as_invoker" {
  for_each           = toset(["trigger", "timer", "scheduler"])
  service_account_id = google_service_account.tasks_invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.fn[each.key].email}"
}
