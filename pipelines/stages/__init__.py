"""The stages of the data: landing → bronze → silver → gold, each pure transforms plus its I/O
through `pipelines.storage`, each idempotent per date."""
