"""The running daemon: the trio server around the core, its sockets, files and clocks."""
