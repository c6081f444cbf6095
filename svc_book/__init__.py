"""svc_book: L2 books per instrument, top of book on change."""
