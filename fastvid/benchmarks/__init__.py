"""`fastvid bench KIND` (application layer): one module per benchmark (loader, events, events_io, events_read,
events_shards, crop, train, remote, all), each reporting ratios against a baseline measured in the same run;
servers.py holds the HTTP / S3 servers on 127.0.0.1 that the remote benchmark and tests read from."""
