locals {
  # Names the code reads from its environment (interfaces.md); tests check they match.
  topic_id    = "buildbucket-notifications"
  queue_id    = "status-checks"
  bucket_name = "${var.project}-shepherd-source"
  # A gen2 function also answers at this address, known before it exists: on_timer's own URL
  # is in its environment (the status checks it enqueues point at itself).
  timer_url = "https://${var.region}-${var.project}.cloudfunctions.net/on-timer"

  common_env = {
    GOOGLE_CLOUD_PROJECT           = var.project
    SHEPHERD_JOBS                  = "jobs.toml"
    SHEPHERD_TASKS_QUEUE           = google_cloud_tasks_queue.status_checks.id
    SHEPHERD_TIMER_URL             = local.timer_url
    SHEPHERD_TASKS_SERVICE_ACCOUNT = google_service_account.tasks_invoker.email
    SHEPHERD_TOPIC                 = google_pubsub_topic.notifications.id
    SHEPHERD_LOG_RETENTION         = "${var.log_retention_days * 24}h"
    SHEPHERD_LOG_FORMAT            = "json" # Cloud Logging's structured lines
  }

  # name -> entry point in main.py, its service account, whether it holds the signing key,
  # whether it calls Buildbucket (as SHEPHERD_BUILDBUCKET_ACCOUNT), and who reaches it:
  # Cloud Tasks and Pub/Sub push count as internal traffic.
  functions = {
    "trigger"               = { entry_point = "trigger", account = "trigger", secret = false, buildbucket = false, ingress = "ALLOW_ALL" }
    "on-build-notification" = { entry_point = "on_build_notification", account = "notification", secret = true, buildbucket = true, ingress = "ALLOW_INTERNAL_ONLY" }
    "on-timer"              = { entry_point = "on_timer", account = "timer", secret = true, buildbucket = true, ingress = "ALLOW_INTERNAL_ONLY" }
    "api"                   = { entry_point = "api", account = "api", secret = false, buildbucket = true, ingress = "ALLOW_ALL" }
    "scheduler"             = { entry_point = "scheduler", account = "scheduler", secret = false, buildbucket = false, ingress = "ALLOW_INTERNAL_ONLY" }
  }
  buildbucket_env = { SHEPHERD_BUILDBUCKET_ACCOUNT = google_service_account.buildbucket.email }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "cloudtasks.googleapis.com",
    "firestore.googleapis.com",
    "iamcredentials.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "artifactregistry.googleapis.com",
  ])
  service            = each.value
  disable_on_destroy = false
}

# --- source -------------------------------------------------------------------------------

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Access logs of a bucket that only holds build archives add cost, not insight.
  name                        = local.bucket_name
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      num_newer_versions = 5
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_object" "source" {
  name   = "functions-${filemd5(var.source_archive)}.zip"
  bucket = google_storage_bucket.source.name
  source = var.source_archive
}

# --- the signing key ----------------------------------------------------------------------

resource "random_password" "secret" {
  length  = 48
  special = false
}

resource "google_secret_manager_secret" "signing_key" {
  secret_id = "shepherd-signing-key"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

resource "google_secret_manager_secret_version" "signing_key" {
  secret      = google_secret_manager_secret.signing_key.id
  secret_data = random_password.secret.result
}

# --- the functions ------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "fn" {
  #checkov:skip=CKV_GCP_124:trigger and api are called from outside Google Cloud and guarded by run.invoker IAM; the others are internal-only.
  for_each = local.functions
  name     = each.key
  location = var.region

  build_config {
    runtime     = "python311"
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    max_instance_count               = var.max_instances
    available_memory                 = "512Mi"
    timeout_seconds                  = 120
    ingress_settings                 = each.value.ingress
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.fn[each.value.account].email
    environment_variables            = merge(local.common_env, each.value.buildbucket ? local.buildbucket_env : {})
    max_instance_request_concurrency = 1

    dynamic "secret_environment_variables" {
      for_each = each.value.secret ? [1] : []
      content {
        key        = "SHEPHERD_SECRET"
        project_id = var.project
        secret     = google_secret_manager_secret.signing_key.secret_id
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_version.signing_key,
    google_secret_manager_secret_iam_member.signing_key,
  ]
}
