"""The search-space files shipped with nasproxy, installed as ``nasproxy.search_spaces``."""
