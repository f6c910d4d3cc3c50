"""Sources of cluster state: the API watcher (api) and manifest files (manifests).

Both parse with `kproxy.sources.parse` (through the Tracker) and feed a Tracker.
"""
