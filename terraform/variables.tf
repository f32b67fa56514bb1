variable "project" {
  type        = string
  description = "The Google Cloud project shepherd is deployed into."
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "A project id: 6 to 30 lowercase letters, digits and hyphens."
  }
}

variable "region" {
  type        = string
  description = "The region of the functions, the queue and the Firestore database."
  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]$", var.region))
    error_message = "A region such as us-central1 or europe-west1."
  }
}

variable "source_archive" {
  type        = string
  description = "The functions' source archive built by `make package` (main.py, shepherd/, requirements.txt, jobs.toml)."
  default     = "../dist/functions.zip"
  validation {
    condition     = can(regex("\\.zip$", var.source_archive))
    error_message = "The source archive is a .zip file."
  }
}

variable "buildbucket_service_account" {
  type        = string
  description = "The service account Buildbucket publishes notifications as (cr-buildbucket@appspot.gserviceaccount.com for the public instance)."
  default     = "cr-buildbucket@appspot.gserviceaccount.com"
  validation {
    condition     = can(regex("^[^@\\s]+@[^@\\s]+\\.gserviceaccount\\.com$", var.buildbucket_service_account))
    error_message = "A service account email ending in .gserviceaccount.com."
  }
}

variable "trigger_invokers" {
  type        = list(string)
  description = "IAM members allowed to call the trigger function, e.g. [\"user:me@example.com\", \"serviceAccount:ci@p.iam.gserviceaccount.com\"]."
  default     = []
  validation {
    condition     = alltrue([for m in var.trigger_invokers : can(regex("^(user|serviceAccount|group|domain):", m))])
    error_message = "Members are user:, serviceAccount:, group: or domain: (never allUsers or allAuthenticatedUsers)."
  }
}

variable "api_invokers" {
  type        = list(string)
  description = "IAM members allowed to call the api function (read, abort, web page)."
  default     = []
  validation {
    condition     = alltrue([for m in var.api_invokers : can(regex("^(user|serviceAccount|group|domain):", m))])
    error_message = "Members are user:, serviceAccount:, group: or domain: (never allUsers or allAuthenticatedUsers)."
  }
}

variable "status_checks_max_attempts" {
  type        = number
  description = "How many times Cloud Tasks delivers one status check before giving up; -1: never gives up (the default, as LUCI's timer queue)."
  default     = -1
  validation {
    condition     = var.status_checks_max_attempts == -1 || var.status_checks_max_attempts >= 100
    error_message = "-1 (unlimited) or at least 100: a check given up leaves its invocation to the sweep alone."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Debug log chunks older than this are deleted by a Firestore TTL policy."
  default     = 90
  validation {
    condition     = var.log_retention_days >= 1
    error_message = "At least one day."
  }
}

variable "max_instances" {
  type        = number
  description = "The most instances each function scales to."
  default     = 20
  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "Between 1 and 1000."
  }
}
