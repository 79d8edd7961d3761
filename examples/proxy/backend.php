<?php
// A minimal ws2api backend for ringcast's proxy dialect (docs/proxy.md).
// Run: php -S 127.0.0.1:5000 examples/proxy/backend.php
//   GET    /<ClientId>  -> "ok" allows the WebSocket connection
//   POST   /<ClientId>  -> a client message; a non-empty answer goes back to it
//   DELETE /<ClientId>  -> the client left; the body is the close reason
// Push to a client any time: curl -d 'hello' http://127.0.0.1:8081/<ClientId>

$client = ltrim(parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH), '/');
$body = file_get_contents('php://input');
header('Content-Type: text/plain; charset=utf-8');

switch ($_SERVER['REQUEST_METHOD']) {
    case 'GET':
        if (str_starts_with($client, 'banned')) {
            http_response_code(403);
            echo 'you are banned';
            break;
        }
        echo 'ok';
        break;
    case 'POST':
        echo 'you said: ' . $body;
        break;
    case 'DELETE':
        error_log("$client left: " . ($body === '' ? '(no reason)' : $body));
        break;
    default:
        http_response_code(405);
}
