"""The Redis namespace: the store and its flush script, readers for the tools,
opening a store (a URL, or the embedded redis-server).
"""
