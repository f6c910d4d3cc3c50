"""Sources of cluster state: the API watcher (api) and manifest files (manifests).

Both feed raw objects to a Tracker, which parses them with `kproxy.parse`.
"""
