output "trigger_url" {
  description = "POST a trigger here (interfaces.md), with an identity token of a trigger invoker."
  value       = google_cloudfunctions2_function.fn["trigger"].service_config[0].uri
}

output "api_url" {
  description = "The read API, abort and the web page."
  value       = google_cloudfunctions2_function.fn["api"].service_config[0].uri
}

output "topic" {
  description = "The Pub/Sub topic Buildbucket publishes build notifications to."
  value       = google_pubsub_topic.notifications.id
}

output "queue" {
  description = "The Cloud Tasks queue of the status checks."
  value       = google_cloud_tasks_queue.status_checks.id
}

output "buildbucket_account" {
  description = "The service account every Buildbucket call is made as: grant it role/buildbucket.triggerer in your bucket's realm."
  value       = google_service_account.buildbucket.email
}
