// Peer for Sonde's in-process linking test: a com.sun.net.httpserver front on a fixed pool of
// 8 threads. GET /url/<id> calls GET /down/<id> on the downstream with HttpURLConnection (on
// the serving thread); GET /hc/<id> calls GET /hc/<id> with java.net.http.HttpClient (which
// sends from its own threads). Answers `done <id>`. Usage: java LinkingApp PORT DOWN_PORT.
// Prints `ready` once listening.
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URL;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class LinkingApp {
    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(args[0]);
        int down = Integer.parseInt(args[1]);
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/", ex -> {
            String path = ex.getRequestURI().getPath();
            String id = path.substring(path.lastIndexOf('/') + 1);
            try {
                if (path.startsWith("/hc/")) {
                    HttpRequest req = HttpRequest.newBuilder(
                            URI.create("http://127.0.0.1:" + down + "/hc/" + id)).GET().build();
                    client.send(req, HttpResponse.BodyHandlers.ofString());
                } else {
                    HttpURLConnection c = (HttpURLConnection)
                            new URL("http://127.0.0.1:" + down + "/down/" + id).openConnection();
                    try (InputStream in = c.getInputStream()) {
                        in.readAllBytes();
                    }
                }
            } catch (Exception e) {
                e.printStackTrace();
            }
            byte[] body = ("done " + id).getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream out = ex.getResponseBody()) {
                out.write(body);
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
        System.out.println("ready");
        System.out.flush();
    }
}
