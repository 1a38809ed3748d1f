//! Web pages: one handler file per page, its template beside it. Pages format what their
//! handler gathered from the same data the JSON endpoints serve.

pub mod shared_run;
