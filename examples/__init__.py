"""Runnable examples of Titan Event Bus: a file watcher, a handler app, a scheduler."""
