"""Helpers shared by the whole suite: free ports, process control, waiting on gRPC servers."""
