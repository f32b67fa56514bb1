data "google_project" "this" {
  project_id = var.project
}

locals {
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# One identity per function, plus the two identities that invoke functions.
resource "google_service_account" "fn" {
  for_each     = toset(["trigger", "notification", "timer", "api", "scheduler"])
  account_id   = "shepherd-${each.key}"
  display_name = "shepherd ${each.key} function"
}

# The one identity every Buildbucket call is made as (SHEPHERD_BUILDBUCKET_ACCOUNT): grant it
# role/buildbucket.triggerer in your bucket's realm (README). The functions impersonate it.
resource "google_service_account" "buildbucket" {
  account_id   = "shepherd-buildbucket"
  display_name = "shepherd calling Buildbucket"
}

resource "google_service_account" "tasks_invoker" {
  account_id   = "shepherd-tasks-invoker"
  display_name = "Cloud Tasks calling shepherd's on-timer"
}

resource "google_service_account" "push_invoker" {
  account_id   = "shepherd-push-invoker"
  display_name = "Pub/Sub pushing to shepherd's on-build-notification"
}

# Every function reads and writes invocations in Firestore.
resource "google_project_iam_member" "datastore_user" {
  for_each = google_service_account.fn
  project  = var.project
  role     = "roles/datastore.user"
  member   = "serviceAccount:${each.value.email}"
}

# The signing key, only for the functions that sign (on-timer, at launch) or verify it.
resource "google_secret_manager_secret_iam_member" "signing_key" {
  for_each  = { for name, f in local.functions : f.account => f if f.secret }
  secret_id = google_secret_manager_secret.signing_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.fn[each.key].email}"
}

# Who may call what. A gen2 function is a Cloud Run service: run.invoker is the check.
resource "google_cloud_run_service_iam_member" "timer_invoker" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["on-timer"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.tasks_invoker.email}"
}

resource "google_cloud_run_service_iam_member" "push_invoker" {
  location = var.region
  service  = google_cloudfunctions2_function.fn["on-build-notification"].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push_invoker.email}"
}

resource "google_cloud_run_service_iam_member" "trigger_invokers" {
  for_each = toset(var.trigger_invokers)
  location = var.region
  service  = google_cloudfunctions2_function.fn["trigger"].name
  role     = "roles/run.invoker"
  member   = each.value
}

resource "google_cloud_run_service_iam_member" "api_invokers" {
  for_each = toset(var.api_invokers)
  location = var.region
  service  = google_cloudfunctions2_function.fn["api"].name
  role     = "roles/run.invoker"
  member   = each.value
}

# Exactly the functions that call Buildbucket may mint its tokens: on-timer (launch, status
# checks), on-build-notification (GetBuild) and api (abort's CancelBuild).
resource "google_service_account_iam_member" "buildbucket_token_creators" {
  for_each           = { for name, f in local.functions : f.account => f if f.buildbucket }
  service_account_id = google_service_account.buildbucket.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.fn[each.key].email}"
}
