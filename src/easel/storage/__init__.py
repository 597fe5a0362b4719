"""Where files live: the object store port (:mod:`.objects`), whether it takes writes now
(:mod:`.check`), signed output URLs (:mod:`.signing`) and STS's temporary credentials for
direct S3 uploads (:mod:`.sts`)."""
