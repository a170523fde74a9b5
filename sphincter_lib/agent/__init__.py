"""The source side: ``sphincter connect`` (its options, the link to the relay, the local
service) and the WebSocket client it uses."""
