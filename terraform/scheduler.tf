# The tick: Cloud Scheduler calls the scheduler function every minute; each tick triggers the
# due jobs once (a second call in the same minute is a no-op), then sweeps: it hands again the
# checks and starts the queue lost, and times out invocations past invocation_timeout.
resource "google_service_account" "scheduler_invoker" {
  account_id   = "shepherd-scheduler-invoker"
  display_name = "Cloud Scheduler calling shepherd's scheduler"
}

resource "google_cloud_run_service_iam_member" "scheduler_invoker" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["scheduler"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.scheduler_invoker.email}"
}

resource "google_cloud_scheduler_job" "tick" {
  name      = "shepherd-scheduler-tick"
  region    = var.region
  schedule  = "* * * * *"
  time_zone = "Etc/UTC"

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.fn["scheduler"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.scheduler_invoker.email
    }
  }

  retry_config {
    retry_count = 0 # the next minute's tick is the retry
  }

  depends_on = [google_project_service.apis]
}
