# The topic Buildbucket publishes build notifications to, and the push subscription that
# delivers them to on-build-notification with an OIDC token, retries and a dead-letter topic.

resource "google_pubsub_topic" "notifications" {
  #checkov:skip=CKV_GCP_83:Build notifications carry no secrets; Google-managed encryption suffices.
  name                       = local.topic_id
  message_retention_duration = "86400s"
  depends_on                 = [google_project_service.apis]
}

resource "google_pubsub_topic_iam_member" "buildbucket_publishes" {
  topic  = google_pubsub_topic.notifications.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${var.buildbucket_service_account}"
}

# Topic preparation at launch (on-timer) checks the topic and the publisher binding.
resource "google_pubsub_topic_iam_member" "timer_prepares_topic" {
  topic  = google_pubsub_topic.notifications.id
  role   = "roles/pubsub.admin"
  member = "serviceAccount:${google_service_account.fn["timer"].email}"
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Build notifications carry no secrets; Google-managed encryption suffices.
  name       = "${local.topic_id}-dead-letter"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${local.topic_id}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "notifications_push" {
  name                 = "${local.topic_id}-push"
  topic                = google_pubsub_topic.notifications.id
  ack_deadline_seconds = 120

  push_config {
    push_endpoint = google_cloudfunctions2_function.fn["on-build-notification"].service_config[0].uri
    oidc_token {
      service_account_email = google_service_account.push_invoker.email
    }
  }

  retry_policy {
    minimum_backoff = "1s"
    maximum_backoff = "60s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = 20
  }

  expiration_policy {
    ttl = ""
  }
}

# The Pub/Sub service agent moves undeliverable messages to the dead-letter topic.
resource "google_pubsub_topic_iam_member" "agent_publishes_dead_letters" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "agent_acks_dead_letters" {
  subscription = google_pubsub_subscription.notifications_push.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
