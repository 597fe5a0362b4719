{{- define "easel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "easel.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "api") */}}
{{- define "easel.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "easel.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "easel.fullname" .)) -}}
{{- end -}}

{{- define "easel.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of an API pod. After SIGTERM (which Kubernetes sends once
preStop's sleep is over; the sleep counts against the period):
  preStopSleepS   Services and ingresses stop routing here while the pod still serves;
  shutdownGraceS  event streams end at once; requests still running get shutdown_grace_s
                  (uvicorn's graceful timeout) before they are cancelled;
  10              then the webhook dispatcher gives deliveries under way their request
                  timeout, webhook_timeout_s (10 s unless raised through extraEnv);
  5               closing the database pool and exiting.
Past this Kubernetes sends SIGKILL; nothing the API holds is lost by it (a delivery cut short
is retried from the outbox), so a longer period would only delay rollouts.
*/}}
{{- define "easel.apiGraceS" -}}
{{- add (int .Values.api.preStopSleepS) (int .Values.settings.shutdownGraceS) 10 5 -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of a worker pod: workerDrainS + 20. On SIGTERM a worker claims
nothing more and gives its running tasks worker_drain_s to finish; it then sets their stop
flag (a local pipeline stops at its next step; a task is given 5 s to notice), puts each
still running back in the queue (one transaction per task), unregisters and exits 0: 15 s
more for that, room for a busy node. A task it could not put back (the database away) is reclaimed by another
worker once its lease lapses, so a SIGKILL after this period loses nothing.
*/}}
{{- define "easel.workerGraceS" -}}
{{- add (int (ceil .Values.settings.workerDrainS)) 20 -}}
{{- end -}}

{{/* KEDA's connection string: secrets.kedaConnection, else databaseUrl without "+asyncpg". */}}
{{- define "easel.kedaConnection" -}}
{{- if .Values.secrets.kedaConnection -}}
{{- .Values.secrets.kedaConnection -}}
{{- else if contains "?" .Values.secrets.databaseUrl -}}
{{- fail "secrets.databaseUrl has a query string (asyncpg's options are not pgx's): set secrets.kedaConnection to the same database in pgx's form, e.g. postgresql://USER:PASSWORD@HOST:5432/DB?sslmode=require" -}}
{{- else if hasPrefix "postgresql+asyncpg://" .Values.secrets.databaseUrl -}}
{{- replace "postgresql+asyncpg://" "postgresql://" .Values.secrets.databaseUrl -}}
{{- else -}}
{{- fail "keda.enabled needs PostgreSQL: secrets.databaseUrl must start with postgresql+asyncpg:// (or set secrets.kedaConnection)" -}}
{{- end -}}
{{- end -}}

{{/* The environment both the API and the workers get (besides the Secret's keys). */}}
{{- define "easel.env" -}}
- name: EASEL_STORAGE_URL
  value: {{ .Values.storage.url | quote }}
- name: EASEL_STORAGE_CREATE_BUCKET
  value: {{ .Values.storage.createBucket | toString | quote }}
{{- with .Values.storage.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.storage.region | quote }}
{{- if .Values.storage.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
- name: EASEL_LEASE_S
  value: {{ .Values.settings.leaseS | toString | quote }}
- name: EASEL_SHUTDOWN_GRACE_S
  value: {{ .Values.settings.shutdownGraceS | toString | quote }}
- name: EASEL_WORKER_DRAIN_S
  value: {{ .Values.settings.workerDrainS | toString | quote }}
- name: EASEL_WORKER_CONCURRENCY
  value: {{ .Values.settings.workerConcurrency | toString | quote }}
- name: EASEL_LOG_FORMAT
  value: {{ .Values.settings.logFormat | quote }}
{{- with .Values.settings.publicUrl }}
- name: EASEL_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- range $name, $value := .Values.settings.extraEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- if .Values.config }}
- name: EASEL_CONFIG
  value: /etc/easel/easel.toml
{{- end }}
- name: EASEL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "easel.secretName" . }}
      key: EASEL_DATABASE_URL
{{- end -}}

{{/* The Secret's other keys, as environment variables (optional: an empty one is left out). */}}
{{- define "easel.secretEnv" -}}
{{- $secret := include "easel.secretName" . -}}
{{- range $name, $value := .Values.secrets.env }}
{{- if or $value $.Values.secrets.existingSecret }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $name }}
      optional: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Volumes every pod has: /tmp and the home directory are writable, the rest is not. */}}
{{- define "easel.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.config }}
- name: config
  configMap:
    name: {{ include "easel.fullname" . }}-config
{{- end }}
{{- end -}}

{{- define "easel.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.config }}
- name: config
  mountPath: /etc/easel
  readOnly: true
{{- end }}
{{- end -}}
