resource "google_firestore_database" "default" {
  name                              = "(default)"
  location_id                       = var.region
  type                              = "FIRESTORE_NATIVE"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = "DELETE_PROTECTION_ENABLED"
  depends_on                        = [google_project_service.apis]
}

locals {
  firestore_indexes = jsondecode(file("${path.module}/firestore.indexes.json"))
}

resource "google_firestore_index" "composite" {
  for_each   = { for i in local.firestore_indexes.indexes : join("-", concat([i.collectionGroup], [for f in i.fields : f.fieldPath])) => i }
  database   = google_firestore_database.default.name
  collection = each.value.collectionGroup
  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path = fields.value.fieldPath
      order      = fields.value.order
    }
  }
}

# The invocation state is one large JSON string: never queried, so not indexed.
resource "google_firestore_field" "unindexed" {
  for_each   = { for f in local.firestore_indexes.fieldOverrides : "${f.collectionGroup}-${f.fieldPath}" => f }
  database   = google_firestore_database.default.name
  collection = each.value.collectionGroup
  field      = each.value.fieldPath
  index_config {}
}

# Debug log chunks expire (SHEPHERD_LOG_RETENTION sets expire_at when they are written).
resource "google_firestore_field" "log_ttl" {
  database   = google_firestore_database.default.name
  collection = "log"
  field      = "expire_at"
  ttl_config {}
  index_config {}
}
