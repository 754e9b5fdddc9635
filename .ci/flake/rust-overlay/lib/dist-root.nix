"https://static.rust-lang.org/dist"
