"""Worker plumbing: settings, storage, safe fetching."""
