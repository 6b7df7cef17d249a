"""Work that spans more than one query: accounts, logins, conversations, the assistant."""
