// Test server: Java com.sun.net.httpserver. Same routes as python_server.py.
// Usage: java JavaServer.java PORT
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class JavaServer {
    static void send(HttpExchange ex, int code, String body) throws java.io.IOException {
        byte[] data = body.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "text/plain");
        ex.sendResponseHeaders(code, data.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(data);
        }
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/", ex -> {
            String path = ex.getRequestURI().getPath();
            if (ex.getRequestMethod().equals("POST")) {
                byte[] body = ex.getRequestBody().readAllBytes();
                send(ex, 201, "got " + body.length + "\n");
            } else if (path.startsWith("/ok")) {
                send(ex, 200, "ok\n");
            } else if (path.startsWith("/error")) {
                send(ex, 500, "error\n");
            } else {
                send(ex, 404, "not found\n");
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
    }
}
